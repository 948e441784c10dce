"""cffi (API mode) build of the C core.  The same C files are linked into the helper executable by setup.py."""

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

ffibuilder = FFI()
ffibuilder.cdef(
    """
    const char *aiogaol_step_name(int step);
    int aiogaol_record_size(void);
    int aiogaol_spawn_helper(const char *path, const char *argblob, size_t arglen, int argc,
                             const char *envblob, size_t envlen, int envc, const int *fd_map, int n_pairs);
    int aiogaol_probe_userns(void);
    int aiogaol_landlock_abi(void);
    int aiogaol_zygote_seal(void);
    int aiogaol_raise_nice(int nice);
    int aiogaol_zygote_clone(int argc, char **argv, const char *filter, int filter_len, int sock, int err,
                             int sync_r, int sync_w, int *k_out);
    void aiogaol_zygote_init_wait(int program, int to_program, int host);
    void aiogaol_zygote_init_build(void);
    void aiogaol_zygote_init_enter(void);
    void aiogaol_zygote_init_job(int report_fd);
    void aiogaol_zygote_init_run(int program, int to_program, int payload);
    void aiogaol_zygote_program_walls(int hold);
    void aiogaol_zygote_program_ready(int hold);
    int aiogaol_zygote_program_receive(int hold);
    void aiogaol_zygote_program_enter(int report_fd);
    int aiogaol_agent_wire_size(int which);
    """
)
ffibuilder.set_source(
    "aiogaol._native._core",
    '#include "jail.h"\n#include "agent.h"',
    # Every C file of the core but the helper's main() (setup.py links the same set into the helper).
    sources=sorted(os.path.relpath(os.path.join(HERE, f)) for f in os.listdir(HERE)
                   if f.endswith(".c") and f != "helper_main.c"),
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-fno-strict-aliasing"],
    py_limited_api=True,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
