import { useEffect, useState } from "preact/hooks";

/** Re-render whenever ``source`` says it changed. */
export function useChanges(source: { subscribe(fn: () => void): () => void }): void {
  const [, setTick] = useState(0);
  useEffect(() => source.subscribe(() => setTick((t) => t + 1)), [source]);
}

/** Re-render every ``ms`` while ``active`` (meters, typing expiry). */
export function useTicker(ms: number, active = true): void {
  const [, setTick] = useState(0);
  useEffect(() => {
    if (!active) return;
    const id = window.setInterval(() => setTick((t) => t + 1), ms);
    return () => window.clearInterval(id);
  }, [ms, active]);
}
