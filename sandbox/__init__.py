"""The walls around untrusted code, for every sandboxed child process (ground floor).

The trainer's workers (model code) and the Data Explorer's runner (exploration
code) run what an LLM wrote in child processes behind the same walls; the walls
live here once, so a hole is fixed once. This package imports no other agentnas
package and no torch; everyone may import it.

- `env`: the child's environment (an allow-list; no secrets);
- `walls`: namespaces (no network, a private mount namespace), read-only
  mounts, dying with the parent;
- `limits`: resource limits, process counts, /proc status;
- `audit`: the audit hook inside the interpreter, one factory for both policies;
- `process`: the parent's side: killing the process group, keeping output
  within bounds, telling an out-of-memory death.

What is specific to one user stays with it: the CUDA memory cap and the checks
between reused workers in `trainer_daemon`, the explorer's outcomes in
`agents.code_runner`.
"""
