/* The end-to-end benchmark's no-op worker (scripts/bench): a static program with no C library
 * that exits 0 at once, so the tasks/s it measures is workhook's own cost per task. A dynamically
 * linked program such as /usr/bin/true costs about 0.4 ms of CPU per start on the 2-core VM of
 * docs/BENCHMARKS.md (the dynamic loader, and glibc's CPU feature detection, whose CPUID
 * instructions trap to the hypervisor), which the benchmark reports separately.
 *
 *   cc -O2 -static -nostdlib -o noop-worker noop.c
 */
void _start(void) {
#if defined(__x86_64__)
    __asm__ volatile("mov $60, %eax\n\txor %edi, %edi\n\tsyscall");
#elif defined(__aarch64__)
    __asm__ volatile("mov x8, #93\n\tmov x0, #0\n\tsvc #0");
#else
#error "the no-op worker has no exit syscall for this architecture"
#endif
    for (;;) {
    }
}
