"""Builds the optional C extensions: the uniform coder's kernel
(weightroll/coders/_kernel.c), the trellis coder's loops
(weightroll/coders/_trellis.c) and the code image's inflater
(weightroll/_format/_inflate.c).

Everything else is declared in pyproject.toml. All three are optional: where
they cannot be compiled, the install goes on, the coders use numpy, which
computes the same codes, error sums and so the same archives, and zlib-ng
inflates the code image, to the same pixels, more slowly.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "unix":  # gcc and clang
            for extension in self.extensions:
                # -ffp-contract=off: no fused multiply-add, so float32 results match numpy's.
                extension.extra_compile_args = ["-O3", "-ffp-contract=off", "-fno-fast-math"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension("weightroll.coders._kernel", ["weightroll/coders/_kernel.c"], optional=True),
        Extension("weightroll.coders._trellis", ["weightroll/coders/_trellis.c"], optional=True),
        Extension("weightroll._format._inflate", ["weightroll/_format/_inflate.c"], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
