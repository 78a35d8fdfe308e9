// Test helpers: a real HTTP server on loopback whose answers each test scripts, and a Storage in memory.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface Seen {
  method: string;
  path: string;
  headers: IncomingMessage["headers"];
  body: string;
  at: number;
}

export type Handler = (req: Seen, res: ServerResponse) => void | Promise<void>;

export class TestServer {
  seen: Seen[] = [];
  handler: Handler = (_req, res) => {
    res.writeHead(404).end();
  };
  private server: Server;
  url = "";

  constructor() {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const seen: Seen = {
          method: req.method ?? "",
          path: req.url ?? "",
          headers: req.headers,
          body: Buffer.concat(chunks).toString(),
          at: Date.now(),
        };
        this.seen.push(seen);
        void this.handler(seen, res);
      });
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Event ids of every batch/identify request that reached the server. */
  eventIds(): string[] {
    const ids: string[] = [];
    for (const s of this.seen) {
      if (s.path === "/v1/batch") for (const e of JSON.parse(s.body).batch) ids.push(e.event_id);
      if (s.path === "/v1/identify") ids.push(JSON.parse(s.body).event_id);
    }
    return ids;
  }
}

export function accept(req: Seen, res: ServerResponse): void {
  const events = req.path === "/v1/batch" ? JSON.parse(req.body).batch : [JSON.parse(req.body)];
  res.writeHead(202, { "Content-Type": "application/json" });
  res.end(
    JSON.stringify({
      results: events.map((e: { event_id: string }, index: number) => ({ index, event_id: e.event_id, status: "accepted" })),
    }),
  );
}

export class MemoryStorage implements Storage {
  private data = new Map<string, string>();
  writes = 0;
  get length(): number {
    return this.data.size;
  }
  clear(): void {
    this.data.clear();
  }
  getItem(key: string): string | null {
    return this.data.get(key) ?? null;
  }
  key(index: number): string | null {
    return [...this.data.keys()][index] ?? null;
  }
  removeItem(key: string): void {
    this.data.delete(key);
  }
  setItem(key: string, value: string): void {
    this.writes++;
    this.data.set(key, value);
  }
}

export async function waitFor<T>(check: () => T | Promise<T>, timeoutMs = 5000, what = "condition"): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export const KEY = "plg_testkey1234567_abcdefghijklmnopqrstuvwxyz0123456789";
