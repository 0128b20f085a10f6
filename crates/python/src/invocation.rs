//! `python3`'s command line, parsed on the host: capsa must know which
//! file is the script (to grant it) before the guest starts.

use serde_json::json;

/// What the interpreter is asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A script path, as typed.
    Script(String),
    /// `-c CODE`.
    Code(String),
    /// `-m MODULE`.
    Module(String),
    /// `-`, or no argument with stdin not a terminal.
    Stdin,
    /// No argument, stdin a terminal.
    Repl,
    /// `-V`.
    Version,
    /// `-h`.
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub mode: Mode,
    /// The arguments after the script, code or module.
    pub args: Vec<String>,
    /// `-u`.
    pub unbuffered: bool,
    /// `-I` or `-P`: no script directory or working directory on `sys.path`.
    pub safe_path: bool,
    /// `-q`.
    pub quiet: bool,
    /// `-i`.
    pub inspect: bool,
    /// `-W` options, in order.
    pub warnings: Vec<String>,
}

pub const USAGE: &str = "\
usage: capsa python [CAPSA OPTIONS] [PYTHON OPTIONS] [-c cmd | -m mod | file | -] [arg] ...
Python options (as python3's):
-c cmd : program passed in as string (terminates option list)
-m mod : run library module as a script (terminates option list)
-i     : inspect interactively after running the script
-I     : isolate Python from the user's environment (implies -P)
-P     : don't prepend a potentially unsafe path to sys.path
-q     : don't print the version and copyright messages in the REPL
-u     : unbuffered binary stdout and stderr
-W arg : warning control
-V     : print the Python version number and exit
-h     : print this help message and exit
file   : program read from script file
-      : program read from stdin (default; interactive mode if a tty)
arg ...: arguments passed to the program in sys.argv[1:]
Accepted and without effect in capsa (the sandbox fixes them): -b -B -d -E
-O -OO -R -s -S -v -x -X opt.
capsa options (--allow-read, --allow-net, --python-path, limits...) come
before the Python options: see `capsa python --help`.";

/// The entry point's arguments for the least a run does: start, run
/// `pass`, exit. Such a run shows which pages of the snapshot every run
/// writes (see `capsa_sandbox::prefault`).
pub fn minimal() -> String {
    let inv = Invocation {
        mode: Mode::Code("pass".into()),
        args: Vec::new(),
        unbuffered: false,
        safe_path: true,
        quiet: true,
        inspect: false,
        warnings: Vec::new(),
    };
    inv.to_guest_json(None, None, &[])
}

/// Parses `python3`'s arguments. `stdin_tty` picks the REPL or stdin when
/// no program is given.
pub fn parse(argv: &[String], stdin_tty: bool) -> Result<Invocation, String> {
    let mut inv = Invocation {
        mode: if stdin_tty { Mode::Repl } else { Mode::Stdin },
        args: Vec::new(),
        unbuffered: false,
        safe_path: false,
        quiet: false,
        inspect: false,
        warnings: Vec::new(),
    };
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        match arg.as_str() {
            "--help" => {
                inv.mode = Mode::Help;
                return Ok(inv);
            }
            "--version" => {
                inv.mode = Mode::Version;
                return Ok(inv);
            }
            "-" => {
                inv.mode = Mode::Stdin;
                inv.args = argv[i..].to_vec();
                return Ok(inv);
            }
            "--" => {
                // The next argument is the script, even if it starts with -.
                if let Some(script) = argv.get(i) {
                    inv.mode = Mode::Script(script.clone());
                    inv.args = argv[i + 1..].to_vec();
                }
                return Ok(inv);
            }
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            a if a.starts_with('-') => {
                let flags: Vec<char> = a[1..].chars().collect();
                let mut j = 0;
                while j < flags.len() {
                    let c = flags[j];
                    j += 1;
                    match c {
                        'c' | 'm' | 'W' | 'X' => {
                            let value = if j < flags.len() {
                                flags[j..].iter().collect::<String>()
                            } else if let Some(v) = argv.get(i) {
                                i += 1;
                                v.clone()
                            } else {
                                return Err(format!("Argument expected for the -{c} option"));
                            };
                            match c {
                                'c' => {
                                    inv.mode = Mode::Code(value);
                                    inv.args = argv[i..].to_vec();
                                    return Ok(inv);
                                }
                                'm' => {
                                    inv.mode = Mode::Module(value);
                                    inv.args = argv[i..].to_vec();
                                    return Ok(inv);
                                }
                                'W' => inv.warnings.push(value),
                                _ => {} // -X: CPython implementation options.
                            }
                            break;
                        }
                        'h' | '?' => {
                            inv.mode = Mode::Help;
                            return Ok(inv);
                        }
                        'V' => {
                            inv.mode = Mode::Version;
                            return Ok(inv);
                        }
                        'u' => inv.unbuffered = true,
                        'i' => inv.inspect = true,
                        'q' => inv.quiet = true,
                        'I' | 'P' => inv.safe_path = true,
                        'b' | 'B' | 'd' | 'E' | 'O' | 'R' | 's' | 'S' | 'v' | 'x' => {}
                        other => return Err(format!("unknown option -{other}")),
                    }
                }
            }
            script => {
                inv.mode = Mode::Script(script.to_string());
                inv.args = argv[i..].to_vec();
                return Ok(inv);
            }
        }
    }
    Ok(inv)
}

impl Invocation {
    /// `python3 SCRIPT ARGS...` (what `capsa run script.py` means).
    pub fn script(script: String, args: Vec<String>) -> Self {
        Invocation {
            mode: Mode::Script(script),
            args,
            unbuffered: false,
            safe_path: false,
            quiet: false,
            inspect: false,
            warnings: Vec::new(),
        }
    }

    /// `sys.argv` as `python3` would set it (`-m` is completed by runpy).
    pub fn sys_argv(&self) -> Vec<String> {
        let first = match &self.mode {
            Mode::Script(s) => s.clone(),
            Mode::Code(_) => "-c".into(),
            Mode::Module(_) => "-m".into(),
            Mode::Stdin if !self.args.is_empty() => "-".into(),
            _ => String::new(),
        };
        std::iter::once(first)
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// What the guest's entry point reads (its `argv[1]`). `file` is the
    /// script's absolute path in the guest; `path` the `--python-path`
    /// directories as the guest sees them.
    pub fn to_guest_json(&self, file: Option<&str>, cwd: Option<&str>, path: &[String]) -> String {
        self.to_guest_json_with(file, cwd, cwd, path, None)
    }

    /// [`to_guest_json`](Self::to_guest_json), with a `sys.pycache_prefix`
    /// where capsa keeps bytecode the program may read. The program changes
    /// to `cwd`; `granted_cwd` (the working directory when it is granted)
    /// is the import directory of `-c`, `-m` and stdin.
    pub fn to_guest_json_with(
        &self,
        file: Option<&str>,
        cwd: Option<&str>,
        granted_cwd: Option<&str>,
        path: &[String],
        pycache_prefix: Option<&str>,
    ) -> String {
        let (mode, target) = match &self.mode {
            Mode::Script(s) => ("script", s.as_str()),
            Mode::Code(c) => ("code", c.as_str()),
            Mode::Module(m) => ("module", m.as_str()),
            Mode::Stdin => ("stdin", ""),
            Mode::Repl => ("repl", ""),
            Mode::Version | Mode::Help => ("version", ""),
        };
        let path0 = if self.safe_path {
            None
        } else {
            match &self.mode {
                Mode::Script(_) => file
                    .and_then(|f| f.rsplit_once('/'))
                    .map(|(dir, _)| if dir.is_empty() { "/" } else { dir }.to_string()),
                // Natively "": the working directory. Here only when it is
                // granted: "" would be the guest's `/`, where a data folder
                // granted as `/yaml` would become importable.
                _ => granted_cwd.map(str::to_string),
            }
        };
        json!({
            "mode": mode,
            "target": target,
            "file": file,
            "argv": self.sys_argv(),
            "cwd": cwd,
            "path0": path0,
            "path": path,
            "unbuffered": self.unbuffered,
            "pycache_prefix": pycache_prefix,
            "quiet": self.quiet,
            "inspect": self.inspect,
            "warnings": self.warnings,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, String> {
        parse(
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            false,
        )
    }

    #[test]
    fn modes_and_argv() {
        let i = p(&["-u", "x.py", "-c", "a"]).unwrap();
        assert_eq!(i.mode, Mode::Script("x.py".into()));
        assert!(i.unbuffered);
        assert_eq!(i.sys_argv(), ["x.py", "-c", "a"]);

        let i = p(&["-c", "print(1)", "a", "-b"]).unwrap();
        assert_eq!(i.mode, Mode::Code("print(1)".into()));
        assert_eq!(i.sys_argv(), ["-c", "a", "-b"]);

        let i = p(&["-cprint(2)"]).unwrap();
        assert_eq!(i.mode, Mode::Code("print(2)".into()));

        let i = p(&["-Im", "json.tool", "f"]).unwrap();
        assert_eq!(i.mode, Mode::Module("json.tool".into()));
        assert!(i.safe_path);
        assert_eq!(i.sys_argv(), ["-m", "f"]);

        let i = p(&["-", "a"]).unwrap();
        assert_eq!(i.mode, Mode::Stdin);
        assert_eq!(i.sys_argv(), ["-", "a"]);

        assert_eq!(p(&[]).unwrap().mode, Mode::Stdin);
        assert_eq!(p(&[]).unwrap().sys_argv(), [""]);
        assert_eq!(parse(&[], true).unwrap().mode, Mode::Repl);
        assert_eq!(p(&["-V"]).unwrap().mode, Mode::Version);
        assert_eq!(
            p(&["-W", "error", "-Xutf8", "s.py"]).unwrap().warnings,
            ["error"]
        );
        assert_eq!(
            p(&["--", "-odd.py"]).unwrap().mode,
            Mode::Script("-odd.py".into())
        );
    }

    #[test]
    fn bad_options() {
        assert_eq!(p(&["-Z"]).unwrap_err(), "unknown option -Z");
        assert_eq!(
            p(&["--frobnicate"]).unwrap_err(),
            "unknown option --frobnicate"
        );
        assert_eq!(
            p(&["-c"]).unwrap_err(),
            "Argument expected for the -c option"
        );
    }

    #[test]
    fn guest_json() {
        let i = p(&["s.py", "x"]).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&i.to_guest_json(Some("/w/s.py"), Some("/w"), &["/pkgs".into()]))
                .unwrap();
        assert_eq!(v["path0"], "/w");
        assert_eq!(v["file"], "/w/s.py");
        assert_eq!(v["argv"], serde_json::json!(["s.py", "x"]));
        assert_eq!(v["path"], serde_json::json!(["/pkgs"]));
    }
}
