;; Asks 40 times to grow a memory past its own declared maximum (refused
;; by the engine, 64 MiB each time), and a table past capsa's cap on
;; table elements (refused by capsa), then grows its main memory by 10 MiB.
;; None of the refused growth may count against --memory: exits 0 if the
;; last growth is granted, 3 if not, and 2 if the table grew.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory $m (export "memory") 1)
  (memory $small 1 2)
  (table $t 1 funcref)
  (func (export "_start") (local $i i32)
    (loop $again
      (drop (memory.grow $small (i32.const 1000)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 40))))
    (if (i32.ne (table.grow $t (ref.null func) (i32.const 5000000)) (i32.const -1))
      (then (call $exit (i32.const 2))))
    (if (i32.eq (memory.grow $m (i32.const 160)) (i32.const -1))
      (then (call $exit (i32.const 3))))
    (call $exit (i32.const 4))))
