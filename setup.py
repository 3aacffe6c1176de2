"""Build hook for the optional C accelerator; all other metadata lives in pyproject.toml.

`core._fastpath` and `workers.enrichment._lookups` are optional: without a C compiler the install still
succeeds and the collector runs on their pure-Python equivalents.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "core._fastpath",
            ["core/_fastpath.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "workers.enrichment._lookups",
            ["workers/enrichment/_lookups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
