;; fd_write with no buffers checks its descriptor, as wasmtime's own
;; preview 1 does: exits with the errno for descriptor 99 (BADF, 8) times
;; 10 plus the errno for stdout (0).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $exit
      (i32.add
        (i32.mul (call $fd_write (i32.const 99) (i32.const 0) (i32.const 0) (i32.const 64))
                 (i32.const 10))
        (call $fd_write (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 64))))))
