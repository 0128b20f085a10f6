;; Grows two linear memories by 40 MiB each: under --memory=64M the second
;; growth must be refused (the limit is the guest's total), and the module
;; then exits with 3 (which capsa reports as the memory limit, 137); if
;; both grow, it exits with 0.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory $a (export "memory") 1)
  (memory $b 0)
  (func (export "_start")
    (if (i32.eq (memory.grow $a (i32.const 640)) (i32.const -1))
      (then (call $exit (i32.const 2))))
    (if (i32.eq (memory.grow $b (i32.const 640)) (i32.const -1))
      (then (call $exit (i32.const 3))))
    (call $exit (i32.const 0))))
