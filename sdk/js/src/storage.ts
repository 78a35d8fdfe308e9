/**
 * Where the SDK keeps what must survive a reload: IndexedDB (through idb-keyval) for the event queue and the
 * last-known flags, localStorage when IndexedDB cannot be opened (private modes, old browsers), memory when
 * neither works. Small synchronous values (ids, session) use localStorage directly: they are read at start,
 * before anything async could run.
 */

import { createStore, del, get, set, type UseStore } from "idb-keyval";

export interface AsyncStore {
  readonly kind: "indexeddb" | "localstorage" | "memory";
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown): Promise<void>;
  del(key: string): Promise<void>;
}

export class MemoryStore implements AsyncStore {
  readonly kind = "memory" as const;
  private data = new Map<string, unknown>();
  async get<T>(key: string): Promise<T | undefined> {
    return this.data.get(key) as T | undefined;
  }
  async set(key: string, value: unknown): Promise<void> {
    this.data.set(key, structuredClone(value));
  }
  async del(key: string): Promise<void> {
    this.data.delete(key);
  }
}

/** A Storage-backed store (JSON). */
export class WebStorageStore implements AsyncStore {
  readonly kind = "localstorage" as const;
  constructor(
    private readonly storage: Storage,
    private readonly prefix: string,
  ) {}
  async get<T>(key: string): Promise<T | undefined> {
    const raw = this.storage.getItem(this.prefix + key);
    return raw === null ? undefined : (JSON.parse(raw) as T);
  }
  async set(key: string, value: unknown): Promise<void> {
    this.storage.setItem(this.prefix + key, JSON.stringify(value));
  }
  async del(key: string): Promise<void> {
    this.storage.removeItem(this.prefix + key);
  }
}

class IdbStore implements AsyncStore {
  readonly kind = "indexeddb" as const;
  constructor(private readonly store: UseStore) {}
  get<T>(key: string): Promise<T | undefined> {
    return get<T>(key, this.store);
  }
  set(key: string, value: unknown): Promise<void> {
    return set(key, value, this.store);
  }
  del(key: string): Promise<void> {
    return del(key, this.store);
  }
}

/** localStorage if it works (it throws in some private modes, or is full), else null. */
export function webStorage(): Storage | null {
  try {
    const s = globalThis.localStorage;
    if (!s) return null;
    const probe = "__plg_probe__";
    s.setItem(probe, "1");
    s.removeItem(probe);
    return s;
  } catch {
    return null;
  }
}

/** The best store this environment has for `namespace`, checked by a real round trip. */
export async function openStore(namespace: string): Promise<AsyncStore> {
  if (typeof indexedDB !== "undefined") {
    try {
      const store = new IdbStore(createStore(`plg-${namespace}`, "kv"));
      await store.set("__probe__", 1);
      return store;
    } catch {
      // fall through: IndexedDB exists but cannot be opened (Firefox private windows, quota)
    }
  }
  const ls = webStorage();
  if (ls) return new WebStorageStore(ls, `plg:${namespace}:`);
  return new MemoryStore();
}
