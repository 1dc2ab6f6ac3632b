/* cacheflowctl version: build facts an operator needs in a bug report. */
#include <stdio.h>

#include "ctl/cf_ctl.h"
#include "model/cf_backend.h"

static int cf__version_main(int argc, char **argv) {
  (void)argc; (void)argv;
  printf("cacheflowctl 0.1.0\n");
#ifdef CF_HAVE_CUDA
  printf("cuda: built in; %d usable GPU(s)\n", cf_backend_cuda_devices());
#else
  printf("cuda: not built (CPU backend only)\n");
#endif
  return 0;
}

static const cf_ctl_cmd_t cf__version = {"version", "", "print version and backend availability",
                                         cf__version_main};
CF_CTL_COMMAND(cf__version)
