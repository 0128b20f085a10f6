//! `capsa mcp`: the server's runs and sessions as the tools of a Model
//! Context Protocol server, over stdio (newline-delimited JSON-RPC 2.0).
//! Every tool call goes through the same calls as the HTTP routes, under
//! the operator's flags; a model chooses code and names, never grants.

use super::api::{State, calls};
use capsa_policy::escape_for_terminal;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Protocol versions this server speaks, newest first.
const VERSIONS: &[&str] = &["2025-06-18", "2025-03-26", "2024-11-05"];

const INSTRUCTIONS: &str = "\
Runs Python 3.14 (standard library only, plus what the operator provided) in a \
sandbox. Use run_python without a session for one-off code; give a session name \
to keep variables, functions and imports between calls and to use files: the \
session's working directory holds what the code writes (read_file, list_files) \
and what you put there (write_file). Files outside it, the network and \
environment variables are denied unless the operator granted them; denials are \
listed in the result. Each call has a time limit; a call that reaches a limit \
ends its session.";

pub fn tools() -> Value {
    let session = json!({
        "type": "string",
        "description": "A session name of your choosing. The first call with a name starts that session; later calls with the same name see its variables and files.",
    });
    json!([
        {
            "name": "run_python",
            "title": "Run Python",
            "description": "Run Python 3.14 code in a sandbox and get its stdout, stderr and exit code. Without `session`, the code runs in a fresh interpreter. With `session`, it runs in that persistent interpreter: variables, functions and imports from earlier calls are kept, and the value of a last expression is shown, as in a notebook cell. The working directory is the session's own (or, without a session, a fresh one). Print what you need to see.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "Python source to run."},
                    "session": session,
                },
                "required": ["code"],
            },
        },
        {
            "name": "write_file",
            "title": "Write a file",
            "description": "Write a UTF-8 text file into a session's working directory (making directories on the way; an existing file is replaced), for code run in that session to read by its relative path.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "session": session,
                    "path": {"type": "string", "description": "A relative path, such as data/input.csv."},
                    "content": {"type": "string"},
                },
                "required": ["session", "path", "content"],
            },
        },
        {
            "name": "read_file",
            "title": "Read a file",
            "description": "Read a text file from a session's working directory, such as one the session's code wrote.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "session": session,
                    "path": {"type": "string", "description": "A relative path in the session's working directory."},
                },
                "required": ["session", "path"],
            },
        },
        {
            "name": "list_files",
            "title": "List files",
            "description": "List the entries of a session's working directory, or of a directory in it.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "session": session,
                    "path": {"type": "string", "description": "A relative directory path; the working directory itself if left out."},
                },
                "required": ["session"],
            },
        },
    ])
}

/// The model's session names, and the server's sessions behind them.
pub struct Names {
    map: HashMap<String, String>,
    /// When the client last called (over HTTP, an idle client is ended).
    pub last_used: std::time::Instant,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            map: HashMap::new(),
            last_used: std::time::Instant::now(),
        }
    }
}

/// Bytes of a session name; a name is only a key.
const MAX_NAME: usize = 256;

impl Names {
    /// The server's sessions behind these names.
    pub fn ids(&self) -> Vec<String> {
        self.map.values().cloned().collect()
    }

    async fn session(
        &mut self,
        state: &Arc<State>,
        name: &str,
        create: bool,
    ) -> Result<String, String> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(format!("a session name is 1 to {MAX_NAME} bytes"));
        }
        if let Some(id) = self.map.get(name) {
            return Ok(id.clone());
        }
        if !create {
            return Err(format!(
                "there is no session {name:?}; run_python with this session name starts it"
            ));
        }
        let (status, body) = calls::start_session(state).await;
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        match v["id"].as_str() {
            Some(id) if status.is_success() => {
                self.map.insert(name.to_string(), id.to_string());
                Ok(id.to_string())
            }
            _ => Err(error_text(&v)),
        }
    }
}

fn error_text(v: &Value) -> String {
    v["error"].as_str().unwrap_or("the call failed").to_string()
}

/// A tool's result: text for the model, the JSON answer beside it.
fn result(text: String, structured: Option<Value>, is_error: bool) -> Value {
    let mut r = json!({
        "content": [{"type": "text", "text": text}],
        "isError": is_error,
    });
    if let Some(s) = structured {
        r["structuredContent"] = s;
    }
    r
}

/// How a run reads to a model.
fn describe_run(v: &Value) -> String {
    let mut text = String::new();
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let (out, err) = (field("stdout"), field("stderr"));
    if !out.is_empty() {
        text.push_str(&format!("stdout:\n{out}"));
        if !out.ends_with('\n') {
            text.push('\n');
        }
    }
    if !err.is_empty() {
        text.push_str(&format!("stderr:\n{err}"));
        if !err.ends_with('\n') {
            text.push('\n');
        }
    }
    if let Some(d) = v["denials"].as_array().filter(|d| !d.is_empty()) {
        text.push_str("denied by the sandbox:\n");
        for line in d.iter().filter_map(Value::as_str) {
            text.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(l) = v["limit"].as_str() {
        text.push_str(&format!("limit reached: {l}\n"));
    }
    if v["session_ended"] == true {
        text.push_str("the session has ended; its variables and files are gone (the next call with its name starts a new one)\n");
    }
    text.push_str(&format!("exit code: {}", v["exit_code"]));
    text
}

fn arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, String> {
    args[key]
        .as_str()
        .ok_or_else(|| format!("`{key}` is required, as a string"))
}

pub async fn call_tool(
    state: &Arc<State>,
    names: &mut Names,
    name: &str,
    args: &Value,
) -> Result<Value, String> {
    match name {
        "run_python" => {
            let code = arg(args, "code")?.to_string();
            let (status, body) = match args["session"].as_str() {
                None => calls::run(state, json!({ "code": code })).await,
                Some(s) => {
                    let id = names.session(state, s, true).await?;
                    let answer = calls::exec(state, &id, code).await;
                    let v: Value = serde_json::from_slice(&answer.1).unwrap_or_default();
                    if v["session_ended"] == true || answer.0 == hyper::StatusCode::NOT_FOUND {
                        names.map.remove(s);
                    }
                    answer
                }
            };
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            if !status.is_success() {
                return Ok(result(error_text(&v), None, true));
            }
            let failed = v["exit_code"] != 0;
            Ok(result(describe_run(&v), Some(v), failed))
        }
        "write_file" => {
            let id = names.session(state, arg(args, "session")?, true).await?;
            let (path, content) = (arg(args, "path")?, arg(args, "content")?);
            let (status, body) = calls::write(state, &id, path, content.as_bytes()).await;
            if status.is_success() {
                Ok(result(
                    format!(
                        "wrote {} bytes to {}",
                        content.len(),
                        escape_for_terminal(path)
                    ),
                    None,
                    false,
                ))
            } else {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                Ok(result(error_text(&v), None, true))
            }
        }
        "read_file" | "list_files" => {
            let id = names.session(state, arg(args, "session")?, false).await?;
            let path = match name {
                "read_file" => Some(arg(args, "path")?),
                _ => args["path"].as_str().filter(|p| !p.is_empty() && *p != "."),
            };
            let (status, body) = calls::read(state, &id, path).await;
            if !status.is_success() {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                return Ok(result(error_text(&v), None, true));
            }
            match serde_json::from_slice::<Value>(&body) {
                // A directory: its listing.
                Ok(v) if v.get("entries").is_some() => {
                    let lines: Vec<String> = v["entries"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| {
                            // A name the program chose: one line, nothing
                            // a terminal would act on (the structured
                            // result keeps it as it is).
                            let name = escape_for_terminal(e["name"].as_str().unwrap_or(""));
                            match e["type"].as_str() {
                                Some("directory") => format!("{name}/"),
                                _ => format!("{name} ({} bytes)", e["size"]),
                            }
                        })
                        .collect();
                    let text = if lines.is_empty() {
                        "(empty)".to_string()
                    } else {
                        lines.join("\n")
                    };
                    Ok(result(text, Some(v), false))
                }
                _ if name == "list_files" => Ok(result(
                    format!("{} is a file, not a directory", path.unwrap_or(".")),
                    None,
                    true,
                )),
                _ => match String::from_utf8(body.to_vec()) {
                    Ok(text) => Ok(result(text, None, false)),
                    Err(_) => Ok(result(
                        format!(
                            "{} is not UTF-8 text ({} bytes)",
                            path.unwrap_or(""),
                            body.len()
                        ),
                        None,
                        true,
                    )),
                },
            }
        }
        other => Err(format!("no tool named {other:?}")),
    }
}

/// Answers one JSON-RPC message; `None` for a notification.
pub async fn handle(state: &Arc<State>, names: &mut Names, msg: &Value) -> Option<Value> {
    names.last_used = std::time::Instant::now();
    let id = msg.get("id").cloned();
    let method = msg["method"].as_str().unwrap_or_default();
    let reply = |r: Result<Value, (i64, String)>| {
        let id = id.clone()?;
        Some(match r {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            }
        })
    };
    if msg["jsonrpc"] != "2.0" || method.is_empty() {
        // A response from the client, or not JSON-RPC: nothing to answer
        // unless it carries an id.
        return if msg.get("result").is_some() || msg.get("error").is_some() {
            None
        } else {
            reply(Err((-32600, "not a JSON-RPC 2.0 request".into())))
        };
    }
    let params = &msg["params"];
    match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or_default();
            let version = VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&VERSIONS[0]);
            reply(Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "capsa", "version": env!("CARGO_PKG_VERSION")},
                "instructions": INSTRUCTIONS,
            })))
        }
        "ping" => reply(Ok(json!({}))),
        "tools/list" => reply(Ok(json!({ "tools": tools() }))),
        "tools/call" => {
            let name = params["name"].as_str().unwrap_or_default();
            let args = params.get("arguments").cloned().unwrap_or(json!({}));
            match call_tool(state, names, name, &args).await {
                Ok(r) => reply(Ok(r)),
                Err(e) if name_is_tool(name) => reply(Ok(result(e, None, true))),
                Err(e) => reply(Err((-32602, e))),
            }
        }
        m if m.starts_with("notifications/") => None,
        other => reply(Err((-32601, format!("no method {other:?}")))),
    }
}

fn name_is_tool(name: &str) -> bool {
    ["run_python", "write_file", "read_file", "list_files"].contains(&name)
}

/// Bytes of one message read from stdin.
const MAX_LINE: usize = 64 << 20;

pub fn stdio(state: State) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return super::fail(
                capsa_sandbox::exit::INTERNAL,
                anyhow::anyhow!("cannot start: {e}"),
            );
        }
    };
    runtime.block_on(async move {
        let state = Arc::new(state);
        tokio::spawn(super::api::reap_idle(state.clone()));
        let mut names = Names::default();
        let mut input = tokio::io::BufReader::new(tokio::io::stdin());
        let mut output = tokio::io::stdout();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match (&mut input).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
                Ok(n) => n,
                Err(_) => break,
            };
            if n == 0 {
                break;
            }
            let answer = if line.len() > MAX_LINE {
                // Skip to the end of the overlong line, a piece at a time.
                let mut rest = Vec::new();
                while !line.ends_with(b"\n") {
                    rest.clear();
                    match (&mut input).take(1 << 20).read_until(b'\n', &mut rest).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => line = std::mem::take(&mut rest),
                    }
                }
                Some(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "message too long"}}))
            } else if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            } else {
                match serde_json::from_slice::<Value>(&line) {
                    Ok(msg) if msg.is_object() => handle(&state, &mut names, &msg).await,
                    Ok(_) => Some(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "batches are not taken; send one message per line"}})),
                    Err(e) => Some(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": format!("not JSON: {e}")}})),
                }
            };
            if let Some(a) = answer {
                let mut bytes = a.to_string().into_bytes();
                bytes.push(b'\n');
                if output.write_all(&bytes).await.is_err() || output.flush().await.is_err() {
                    break;
                }
            }
        }
        state.end_all().await;
        0
    })
}
