;; Loops forever without calling the host: only the epoch can stop it.
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))
