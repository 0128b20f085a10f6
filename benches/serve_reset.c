// What resetting a copy-on-write memory snapshot in place would cost (see
// "capsa serve" in the README's benchmarks): a run writes some pages of the
// snapshot, mapped private from capsa's compiled file; the reset reads
// /proc/self/pagemap to find the private copies and copies those pages back
// from the file. Checks at the end that every page equals the file again.
//
//   gcc -O2 -o /tmp/serve_reset benches/serve_reset.c
//   /tmp/serve_reset FILE OFFSET PAGES WRITTEN [same|random]
//
// FILE is a compiled Python in capsa's cache (CACHE/code/*.cwasm); OFFSET
// and PAGES are the first two numbers of the second line of its `.pages`
// file beside it (where the snapshot lies, and its length in pages).
// `same` writes the same WRITTEN pages each round, as runs of one program
// do; `random` writes different ones, as different programs would.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s FILE OFFSET PAGES WRITTEN [same|random]\n", argv[0]);
    return 2;
  }
  const long page = sysconf(_SC_PAGESIZE);
  const long offset = atol(argv[2]), pages = atol(argv[3]);
  const int written = atoi(argv[4]);
  const int same = argc < 6 || strcmp(argv[5], "random") != 0;
  const size_t len = (size_t)pages * page;
  int fd = open(argv[1], O_RDONLY);
  if (fd < 0 || pages <= 0 || written <= 0 || offset % page) {
    perror("open");
    return 2;
  }
  uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, offset);
  const uint8_t *file = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, offset);
  int pagemap = open("/proc/self/pagemap", O_RDONLY);
  uint64_t *entries = malloc(pages * sizeof *entries);
  if (mem == MAP_FAILED || file == MAP_FAILED || pagemap < 0 || !entries) {
    perror("map");
    return 2;
  }
  volatile uint64_t sum = 0;
  for (long i = 0; i < pages; i++) sum += mem[i * page] + file[i * page];

  const int rounds = 50, warm = 5;
  double writes = 0, scan = 0, copy = 0;
  long copied = 0;
  srand(1);
  for (int r = 0; r < rounds; r++) {
    if (same) srand(7);
    double t0 = now_us();
    for (int k = 0; k < written; k++) mem[(rand() % pages) * page + 8]++;
    double t1 = now_us();
    if (pread(pagemap, entries, pages * sizeof *entries, (uintptr_t)mem / page * sizeof *entries) < 0) {
      perror("pagemap");
      return 2;
    }
    double t2 = now_us();
    copied = 0;
    for (long i = 0; i < pages; i++) {
      // Present, and not a page of the file: a private copy.
      if ((entries[i] >> 63 & 1) && !(entries[i] >> 61 & 1)) {
        memcpy(mem + i * page, file + i * page, page);
        copied++;
      }
    }
    double t3 = now_us();
    if (r >= warm) {
      writes += t1 - t0;
      scan += t2 - t1;
      copy += t3 - t2;
    }
  }
  const int n = rounds - warm;
  printf("%ld pages, %d written a round (%s): the writes %.0f us, pagemap %.0f us, "
         "copying back %ld pages %.0f us (means of %d rounds)\n",
         pages, written, same ? "same" : "random", writes / n, scan / n, copied, copy / n, n);
  for (long i = 0; i < pages; i++) {
    if (memcmp(mem + i * page, file + i * page, page)) {
      printf("page %ld differs from the file after the reset\n", i);
      return 1;
    }
  }
  return 0;
}
