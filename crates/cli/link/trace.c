/*
 * trace [--wasm] STARTS OUT PROGRAM ARGS...: runs PROGRAM (an absolute path)
 * under ptrace with a breakpoint at each function start listed in STARTS
 * (hex offsets, one per line), and writes to OUT the offsets of the
 * functions entered, in the order they were first entered, by any thread.
 * Each breakpoint is taken out when first hit, so the program runs at nearly
 * its own speed. Used by scripts/startup-order.
 *
 * The offsets are from where the program's image is mapped; with --wasm,
 * from the start of the first part of a .cwasm file (capsa's compiled code
 * cache) that the program makes executable, which is its .text: until then
 * the tracer stops the program at each system call, to see the mprotect.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#define SPAN (256ul << 20)

static unsigned char orig[SPAN];    /* the image's bytes, as mapped */
static unsigned char patched[SPAN]; /* the same with the breakpoints */
static unsigned char armed[SPAN];   /* a breakpoint not yet hit */
static unsigned char listed[SPAN];  /* a breakpoint, hit or not */

static void die(const char *what) {
  perror(what);
  exit(1);
}

static unsigned long lo = SPAN, hi = 0;

/* Puts the breakpoints into the code mapped at `base`. */
static void arm(int mem, unsigned long base) {
  if (pread(mem, orig + lo, hi - lo, base + lo) != (ssize_t)(hi - lo)) die("reading the image");
  memcpy(patched + lo, orig + lo, hi - lo);
  for (unsigned long i = lo; i < hi; i++)
    if (armed[i]) patched[i] = 0xcc; /* int3 */
  if (pwrite(mem, patched + lo, hi - lo, base + lo) != (ssize_t)(hi - lo)) die("writing the image");
}

/* Where the first mapping whose line in /proc/PID/maps satisfies `want`
   starts (0 if none). */
static unsigned long find_mapping(pid_t pid, int (*want)(const char *, unsigned long, const void *),
                                  const void *arg) {
  char path[64], line[4096];
  snprintf(path, sizeof path, "/proc/%d/maps", pid);
  FILE *maps = fopen(path, "r");
  if (!maps) die("maps");
  unsigned long base = 0;
  while (!base && fgets(line, sizeof line, maps)) {
    unsigned long start = strtoul(line, 0, 16);
    if (want(line, start, arg)) base = start;
  }
  fclose(maps);
  return base;
}

/* The program's own first mapping. */
static int is_program(const char *line, unsigned long start, const void *program) {
  (void)start;
  const char *name = strchr(line, '/');
  size_t n = strlen(program);
  return name && strncmp(name, program, n) == 0 && name[n] == '\n';
}

/* A .cwasm's mapping that starts at `*at`. */
static int is_cwasm_at(const char *line, unsigned long start, const void *at) {
  size_t n = strlen(line);
  return start == *(const unsigned long *)at && n > 7 && strcmp(line + n - 7, ".cwasm\n") == 0;
}

int main(int argc, char **argv) {
  int wasm = argc > 1 && strcmp(argv[1], "--wasm") == 0;
  argv += wasm;
  argc -= wasm;
  if (argc < 4) {
    fprintf(stderr, "usage: trace [--wasm] STARTS OUT PROGRAM ARGS...\n");
    return 2;
  }
  FILE *starts = fopen(argv[1], "r");
  if (!starts) die(argv[1]);
  unsigned long off, n = 0;
  while (fscanf(starts, "%lx", &off) == 1) {
    if (off >= SPAN) continue;
    armed[off] = listed[off] = 1;
    n++;
    if (off < lo) lo = off;
    if (off >= hi) hi = off + 1;
  }
  fclose(starts);
  if (!n) {
    fprintf(stderr, "trace: no function starts in %s\n", argv[1]);
    return 1;
  }

  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    ptrace(PTRACE_TRACEME, 0, 0, 0);
    execv(argv[3], argv + 3);
    _exit(127);
  }
  int st;
  if (waitpid(child, &st, 0) < 0 || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGTRAP) {
    fprintf(stderr, "trace: %s did not start under ptrace\n", argv[3]);
    return 1;
  }
  /* From here on the program dies with the tracer; forks are traced, so
     that a child's copy of the breakpoints can be taken out. */
  if (ptrace(PTRACE_SETOPTIONS, child, 0,
             PTRACE_O_EXITKILL | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK |
                 PTRACE_O_TRACEVFORK | PTRACE_O_TRACEEXEC | PTRACE_O_TRACESYSGOOD) < 0)
    die("ptrace options");
  FILE *out = fopen(argv[2], "w");
  if (!out) die(argv[2]);

  /* /proc/PID/mem writes through the code's write protection. */
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mem", child);
  int mem = open(path, O_RDWR);
  if (mem < 0) die("mem");
  unsigned long base = 0;
  if (!wasm) {
    base = find_mapping(child, is_program, argv[3]);
    if (!base) {
      fprintf(stderr, "trace: %s is not mapped in its own process\n", argv[3]);
      return 1;
    }
    arm(mem, base);
  }

  ptrace(base ? PTRACE_CONT : PTRACE_SYSCALL, child, 0, 0);
  unsigned long entered = 0;
  int code = 1;
  for (;;) {
    pid_t t = waitpid(-1, &st, __WALL);
    if (t < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (WIFEXITED(st) || WIFSIGNALED(st)) {
      if (t == child) {
        code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        break;
      }
      continue;
    }
    int sig = WSTOPSIG(st), pass = 0, event = st >> 16;
    if (sig == (SIGTRAP | 0x80)) {
      /* A system call's entry or exit, while waiting for the .cwasm: the
         exit of an mprotect that made one executable arms it. */
      struct user_regs_struct r;
      if (!base && ptrace(PTRACE_GETREGS, t, 0, &r) == 0 && r.orig_rax == SYS_mprotect &&
          (r.rdx & 4) && r.rax == 0 && (base = find_mapping(child, is_cwasm_at, &r.rdi)))
        arm(mem, base);
    } else if (sig == SIGTRAP && event == PTRACE_EVENT_FORK) {
      /* A forked child has its own copy of the code, breakpoints included:
         put the code back and let it go. */
      unsigned long pid;
      if (ptrace(PTRACE_GETEVENTMSG, t, 0, &pid) == 0) {
        int cst;
        if (waitpid((pid_t)pid, &cst, __WALL) == (pid_t)pid) {
          char cpath[64];
          snprintf(cpath, sizeof cpath, "/proc/%lu/mem", pid);
          int cmem = open(cpath, O_RDWR);
          if (cmem < 0 || (base && pwrite(cmem, orig + lo, hi - lo, base + lo) != (ssize_t)(hi - lo)))
            die("restoring a forked child's code");
          close(cmem);
          ptrace(PTRACE_DETACH, (pid_t)pid, 0, 0);
        }
      }
    } else if (sig == SIGTRAP && event == PTRACE_EVENT_EXEC) {
      /* A vforked child (which shares the code, so stays traced until now)
         became another program. */
      ptrace(PTRACE_DETACH, t, 0, 0);
      continue;
    } else if (sig == SIGTRAP && event == 0 && base) {
      struct user_regs_struct r;
      if (ptrace(PTRACE_GETREGS, t, 0, &r) < 0) continue; /* gone */
      unsigned long at = r.rip - 1 - base;
      if (at < SPAN && listed[at]) {
        if (armed[at]) {
          armed[at] = 0;
          if (pwrite(mem, orig + at, 1, base + at) != 1) die("restoring a function");
          fprintf(out, "%lx\n", at);
          entered++;
        }
        /* Run the function's first instruction (another thread may have hit
           the same breakpoint before it was taken out). */
        r.rip -= 1;
        ptrace(PTRACE_SETREGS, t, 0, &r);
      } else {
        pass = SIGTRAP;
      }
    } else if ((sig != SIGTRAP || event == 0) && sig != SIGSTOP) {
      pass = sig; /* the program's own signals */
    }
    ptrace(base ? PTRACE_CONT : PTRACE_SYSCALL, t, 0, pass);
  }
  if (fclose(out)) die(argv[2]);
  if (!base) {
    fprintf(stderr, "trace: %s made no .cwasm mapping executable\n", argv[3]);
    return 1;
  }
  fprintf(stderr, "trace: %lu of %lu functions entered; exit %d\n", entered, n, code);
  return code;
}
