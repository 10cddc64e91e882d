"""The optional native spawner, core/_spawn.c (see core/spawn.py).

Built where a C compiler and the Python headers are; where they are not,
the build goes on without it and children are started through setpriv.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("core._spawn", ["core/_spawn.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall"])])
