/* The helper executable: all of its work is in the C core (see core.h), shared with the cffi module. */
#include "jail.h"

int main(int argc, char **argv, char **envp) { return aiogaol_helper_main(argc, argv, envp); }
