/* cf_shmclean — remove the readiness files that daemons killed without a chance to clean up
 * (SIGKILL, OOM kill, power loss of a tmpfs-backed container) left in /dev/shm.
 *
 * cf_dataplane names each engine's readiness file /dev/shm/cacheflowd-<pid>-ready-<engine id>
 * and unlinks it when the engine unregisters or the daemon stops; a daemon killed with SIGKILL
 * leaves them behind, and each holds shared memory until someone unlinks it. At start-up the
 * daemon removes a file only when all of these hold:
 *   - its name is exactly cacheflowd-<pid>-ready-<decimal id> (both decimal, no sign, no extra);
 *   - <pid> is not a live process (kill(pid, 0) fails with ESRCH: a live process, even one of
 *     another user (EPERM), keeps its files — another daemon's, or a pid reused since);
 *   - it is a regular file (not a link: opened with O_NOFOLLOW) that starts with the readiness
 *     magic (CF_READY_MAGIC), i.e. one of ours and not a file that happens to match the name.
 */
#ifndef CF_SHMCLEAN_H
#define CF_SHMCLEAN_H

/* Scan directory `dir` (normally "/dev/shm") and unlink the stale readiness files described
 * above. *removed (may be NULL) gets how many were removed, *kept how many matched the name
 * but were kept (live pid, wrong magic, not a regular file). Returns 0, or CF_ENOENT / CF_EACCES
 * / CF_EIO when `dir` cannot be read (files that cannot be opened or unlinked are skipped and
 * logged, not errors: another user's files are not ours to remove). */
int cf_shmclean_stale(const char *dir, int *removed, int *kept);

/* 1 when `name` is cacheflowd-<pid>-ready-<id> with decimal pid > 0 and id; *pid gets the pid. */
int cf_shmclean_parse(const char *name, long *pid);

#endif
