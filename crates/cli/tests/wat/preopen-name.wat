;; Prints the name of the first preopened directory (descriptor 3), as a
;; preview 1 program that looks its directory up by name reads it.
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name"
    (func $prestat_dir_name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $len i32)
    (if (call $prestat_get (i32.const 3) (i32.const 0))
      (then (call $exit (i32.const 2))))
    (local.set $len (i32.load (i32.const 4)))
    (drop (call $prestat_dir_name (i32.const 3) (i32.const 100) (local.get $len)))
    ;; the name, then a newline
    (i32.store8 (i32.add (i32.const 100) (local.get $len)) (i32.const 10))
    (i32.store (i32.const 16) (i32.const 100))
    (i32.store (i32.const 20) (i32.add (local.get $len) (i32.const 1)))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))))
