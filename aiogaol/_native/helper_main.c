/* The helper executable: all of its work is in jail.c, shared with the cffi module. */
#include "jail.h"

int main(int argc, char **argv, char **envp) { return aiogaol_helper_main(argc, argv, envp); }
