"""Build hook for the optional C accelerator; all other metadata lives in pyproject.toml.

`collector._fastpath` and `workers._lookups` are optional: without a C compiler the install still
succeeds and the collector runs on their pure-Python equivalents.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "collector._fastpath",
            ["collector/_fastpath.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "workers._lookups",
            ["workers/_lookups.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)
