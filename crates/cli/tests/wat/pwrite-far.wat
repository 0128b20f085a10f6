;; Makes `f` in the first preopened directory (descriptor 3) and writes one
;; byte at the last offset a file could have (2^64 - 1): exits 10 + the
;; error it gets, or 0 if the write was made.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_pwrite"
    (func $fd_pwrite (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "f")
  (data (i32.const 100) "x")
  (func (export "_start")
    (local $e i32)
    ;; O_CREAT, every right
    (local.set $e (call $path_open (i32.const 3) (i32.const 0) (i32.const 200) (i32.const 1)
      (i32.const 1) (i64.const -1) (i64.const -1) (i32.const 0) (i32.const 300)))
    (if (local.get $e) (then (call $exit (i32.const 2))))
    (i32.store (i32.const 16) (i32.const 100))
    (i32.store (i32.const 20) (i32.const 1))
    (local.set $e (call $fd_pwrite (i32.load (i32.const 300)) (i32.const 16) (i32.const 1)
      (i64.const -1) (i32.const 24)))
    (call $exit (i32.add (i32.const 10) (local.get $e)))))
