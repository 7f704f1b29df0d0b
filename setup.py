"""Builds the two optional C extensions: the uniform coder's kernel
(weightroll/coders/_kernel.c) and Huffman-only deflate of the code image
(weightroll/_format/_deflate.c).

Everything else is declared in pyproject.toml. Both are optional: where they
cannot be compiled, the install goes on, the coder uses numpy (the same codes
at a given step) and the image is deflated by zlib-ng.
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
        # Huffman-only deflate of the code image (zlib-ng's is the fallback).
        Extension("weightroll._format._deflate", ["weightroll/_format/_deflate.c"], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
