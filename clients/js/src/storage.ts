/**
 * @file Where the last id of each trackingId is kept, so that a page reload
 * or a process restart resumes with `since`. Any synchronous or asynchronous
 * key-value store fits the interface; three are built in.
 */

/** A key-value store of strings. Either method may return a promise. */
export interface Storage {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/** Keeps values in this process (or page) only: the default. */
export function memoryStorage(): Storage {
  const map = new Map<string, string>();
  return {
    get: (key) => map.get(key),
    set: (key, value) => {
      map.set(key, value);
    },
  };
}

/** The browser's `localStorage` (or any Web Storage object passed in). */
export function localStorageStorage(store?: globalThis.Storage): Storage {
  const s = store ?? (globalThis as { localStorage?: globalThis.Storage }).localStorage;
  if (!s) throw new TypeError("localStorageStorage: no localStorage in this environment");
  return {
    get: (key) => s.getItem(key),
    set: (key, value) => s.setItem(key, value),
  };
}

type Fs = typeof import("node:fs/promises");

/**
 * A JSON file in Node (all keys in one file). Every write replaces the file
 * atomically (a temporary file renamed over it), so a crash mid-write leaves
 * the previous content; writes are serialised, the last one wins.
 */
export function fileStorage(path: string): Storage {
  let fs: Promise<Fs> | null = null;
  const load = (): Promise<Fs> => (fs ??= import("node:fs/promises"));
  let data: Promise<Record<string, string>> | null = null;
  const read = (): Promise<Record<string, string>> =>
    (data ??= load().then(async (f) => {
      try {
        const parsed: unknown = JSON.parse(await f.readFile(path, "utf8"));
        return parsed && typeof parsed === "object" && !Array.isArray(parsed)
          ? (parsed as Record<string, string>)
          : {};
      } catch (err) {
        // A missing file is an empty store; anything else (unreadable, not JSON) is the caller's to see.
        if ((err as { code?: string }).code === "ENOENT") return {};
        throw err;
      }
    }));
  let writing: Promise<void> = Promise.resolve();
  let seq = 0;
  return {
    get: async (key) => (await read())[key],
    set: (key, value) => {
      const tmp = `${path}.${process.pid}.${++seq}.tmp`;
      const next = writing.then(async () => {
        const [f, d] = await Promise.all([load(), read()]);
        d[key] = value;
        await f.writeFile(tmp, JSON.stringify(d));
        await f.rename(tmp, path);
      });
      // One failed write must not stop the next ones; the failure goes to this caller.
      writing = next.catch(() => {});
      return next;
    },
  };
}
