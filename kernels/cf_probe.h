#ifndef CF_PROBE_H
#define CF_PROBE_H
#ifdef __cplusplus
extern "C" {
#endif
/* Number of CUDA devices usable by this process; 0 when there is no driver or GPU. */
int cf_probe_gpu_count(void);
#ifdef __cplusplus
}
#endif
#endif
