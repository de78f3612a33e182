// Settings from the environment, checked once at start; a bad value is a clear error.

export type GroupMode = "mention" | "all" | "off";

export interface Config {
  host: string;
  port: number;
  token: string;
  authDir: string;
  authTimeoutMs: number;
  fakeSocket: boolean;
  groupMode: GroupMode;
  maxMediaBytes: number;
  pendingMax: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  rate: RateConfig;
  logLevel: string;
}

export interface RateConfig {
  globalPerMin: number;
  globalBurst: number;
  chatPerMin: number;
  chatBurst: number;
}

export class ConfigError extends Error {}

function int(env: NodeJS.ProcessEnv, name: string, dflt: number, min: number): number {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return dflt;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min) throw new ConfigError(`${name}=${JSON.stringify(raw)} must be an integer >= ${min}`);
  return v;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const token = env.WHATSAPP_BRIDGE_TOKEN ?? "";
  if (token.length < 16) {
    throw new ConfigError("WHATSAPP_BRIDGE_TOKEN must be set to a secret of at least 16 characters (the gateway sends the same one)");
  }
  const groupMode = (env.BRIDGE_GROUP_MODE ?? "mention").trim() as GroupMode;
  if (!["mention", "all", "off"].includes(groupMode)) {
    throw new ConfigError(`BRIDGE_GROUP_MODE=${JSON.stringify(groupMode)} must be mention, all or off`);
  }
  const port = int(env, "BRIDGE_PORT", 3001, 0);
  if (port > 65535) throw new ConfigError("BRIDGE_PORT must be at most 65535");
  return {
    host: env.BRIDGE_HOST?.trim() || "127.0.0.1",
    port,
    token,
    authDir: env.BRIDGE_AUTH_DIR?.trim() || "./auth",
    authTimeoutMs: int(env, "BRIDGE_AUTH_TIMEOUT_MS", 10_000, 1),
    fakeSocket: ["1", "true", "yes"].includes((env.BRIDGE_FAKE_SOCKET ?? "").toLowerCase()),
    groupMode,
    maxMediaBytes: int(env, "BRIDGE_MAX_MEDIA_BYTES", 20 * 1024 * 1024, 1),
    pendingMax: int(env, "BRIDGE_PENDING_MAX", 1000, 1),
    backoffInitialMs: int(env, "BRIDGE_BACKOFF_INITIAL_MS", 1000, 1),
    backoffMaxMs: int(env, "BRIDGE_BACKOFF_MAX_MS", 60_000, 1),
    rate: {
      globalPerMin: int(env, "BRIDGE_RATE_GLOBAL_PER_MIN", 30, 1),
      globalBurst: int(env, "BRIDGE_RATE_GLOBAL_BURST", 10, 1),
      chatPerMin: int(env, "BRIDGE_RATE_CHAT_PER_MIN", 12, 1),
      chatBurst: int(env, "BRIDGE_RATE_CHAT_BURST", 4, 1),
    },
    logLevel: env.BRIDGE_LOG_LEVEL?.trim() || "info",
  };
}
