;; A command with no memory to share: WASI passes every argument, path and
;; buffer through the program's exported `memory`.
(module
  (func (export "_start")))
