/**
 * @file A tiny typed event emitter whose `on()` returns its own off function.
 * A listener that throws does not break delivery to the others (nor the SDK's
 * state): the exception is rethrown asynchronously, where it is reported as
 * any uncaught error.
 */

export type Off = () => void;

export class Emitter<Events extends { [K in keyof Events]: (arg: never) => void }> {
  private readonly listeners = new Map<keyof Events, Set<(arg: never) => void>>();

  /** Adds a listener; returns a function that removes it (idempotent). */
  on<K extends keyof Events>(event: K, fn: Events[K]): Off {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(fn);
    return () => {
      this.listeners.get(event)?.delete(fn);
    };
  }

  /** Whether anything listens to `event`. */
  has(event: keyof Events): boolean {
    return (this.listeners.get(event)?.size ?? 0) > 0;
  }

  protected emit<K extends keyof Events>(event: K, arg: Parameters<Events[K]>[0]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (a: Parameters<Events[K]>[0]) => void)(arg);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }

  protected removeAll(): void {
    this.listeners.clear();
  }
}
