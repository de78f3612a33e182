// A small pino-compatible logger (the interface Baileys expects): one JSON line per
// event on stderr. Tokens never reach it; phone numbers appear only at debug level.

const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: 100 };

export interface Logger {
  level: string;
  child(bindings: Record<string, unknown>): Logger;
  trace(obj: unknown, msg?: string): void;
  debug(obj: unknown, msg?: string): void;
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
}

function plain(v: unknown): unknown {
  if (v instanceof Error) return { message: v.message, name: v.name };
  return v;
}

export function createLogger(
  level: string,
  bindings: Record<string, unknown> = {},
  write: (line: string) => void = (l) => process.stderr.write(l + "\n"),
): Logger {
  const threshold = LEVELS[level] ?? LEVELS.info;
  const emit = (lvl: string) => (obj: unknown, msg?: string) => {
    if (LEVELS[lvl] < threshold) return;
    let fields: Record<string, unknown> = {};
    if (typeof obj === "string") msg = msg ?? obj;
    else if (obj instanceof Error) fields = { error: plain(obj) };
    else if (obj && typeof obj === "object") {
      for (const [k, v] of Object.entries(obj as Record<string, unknown>)) fields[k] = plain(v);
    }
    const record = { time: new Date().toISOString(), level: lvl, ...bindings, ...fields, msg };
    try {
      write(JSON.stringify(record));
    } catch {
      write(JSON.stringify({ time: record.time, level: lvl, ...bindings, msg }));
    }
  };
  return {
    level,
    child: (more) => createLogger(level, { ...bindings, ...more }, write),
    trace: emit("trace"),
    debug: emit("debug"),
    info: emit("info"),
    warn: emit("warn"),
    error: emit("error"),
  };
}
