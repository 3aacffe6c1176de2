"""Build hook for the optional C accelerator; all other metadata lives in pyproject.toml.

`collector._fastpath` is optional: without a C compiler the install still succeeds and the collector
runs on its pure-Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "collector._fastpath",
            ["collector/_fastpath.c"],
            optional=True,
            extra_compile_args=["-O2"],
        )
    ]
)
