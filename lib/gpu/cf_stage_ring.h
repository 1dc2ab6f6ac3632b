/* The staging ring moved to lib/store (store/cf_stage_ring.h) once the CPU executor's SSD tier
 * read through it too; this header keeps lib/gpu's and the GPU tests' includes working. */
#ifndef CF_GPU_STAGE_RING_H
#define CF_GPU_STAGE_RING_H
#include "store/cf_stage_ring.h"
#endif
