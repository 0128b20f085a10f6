;; A component that ends with `wasi:cli/exit.exit-with-code(7)` (WASI
;; 0.2.12, what newer toolchains call for `exit(7)`), printing nothing.
(component
  (import "wasi:cli/exit@0.2.12" (instance $exit
    (export "exit-with-code" (func (param "status-code" u8)))))
  (core func $ewc (canon lower (func $exit "exit-with-code")))
  (core module $m
    (import "" "exit-with-code" (func $ewc (param i32)))
    (func (export "run") (result i32)
      (call $ewc (i32.const 7))
      (i32.const 0)))
  (core instance $i (instantiate $m
    (with "" (instance (export "exit-with-code" (func $ewc))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $r (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $r)))
