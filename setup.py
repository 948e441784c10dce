"""Only what pyproject.toml cannot say: the cffi module and the jail helper executable.

The helper is a separate executable (not code run in a fork of Python) so that the server spawns it with
posix_spawn, whose cost does not grow with the server's memory, and so that the namespace set-up runs in
a small single-threaded process.  It is built from the same C sources as the cffi module (every .c file of aiogaol/_native).
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext

HELPER = "aiogaol-jail"
NATIVE = os.path.join("aiogaol", "_native")
# The C core, one file per process role (see aiogaol/_native/core.h), and the helper's main().
CORE = sorted(f for f in os.listdir(NATIVE) if f.endswith(".c") and f != "helper_main.c")
SOURCES = [os.path.join(NATIVE, f) for f in CORE] + [os.path.join(NATIVE, "helper_main.c")]


class build_ext_with_helper(build_ext):
    def run(self) -> None:
        super().run()
        self.build_helper()

    def build_helper(self) -> None:
        compiler = self.compiler
        objects = compiler.compile(
            SOURCES,
            output_dir=self.build_temp,
            extra_preargs=["-O2", "-fno-strict-aliasing"],
            include_dirs=[NATIVE],
        )
        targets = [os.path.join(self.build_lib, NATIVE)]
        if self.inplace:
            targets = [NATIVE]
        for target_dir in targets:
            os.makedirs(target_dir, exist_ok=True)
            target = os.path.join(target_dir, HELPER)
            # Static when the C library allows it: exec of a static binary skips the dynamic loader,
            # which is a measurable part of every spawn.
            try:
                compiler.link_executable(objects, HELPER, output_dir=target_dir, extra_postargs=["-static"])
            except Exception:
                compiler.link_executable(objects, HELPER, output_dir=target_dir)
            os.chmod(target, 0o755)


setup(
    cffi_modules=["aiogaol/_native/build_native.py:ffibuilder"],
    cmdclass={"build_ext": build_ext_with_helper},
)
