/** Small HTTP helpers shared by the SDK's parts: timeouts, Retry-After, jittered backoff. */

export type Fetch = typeof fetch;

/** Seconds (or an HTTP date) of a Retry-After header, as milliseconds; 0 when absent or unreadable. */
export function retryAfterMs(header: string | null, now: number = Date.now()): number {
  if (!header) return 0;
  const seconds = Number(header.trim());
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(header);
  return Number.isNaN(date) ? 0 : Math.max(0, date - now);
}

/** Exponential backoff with full jitter (AWS's "full jitter"): spreads the retries of many pages. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
  return Math.max(baseMs / 2, ceiling * random());
}

/** fetch that gives up after `timeoutMs` (AbortSignal.timeout is not in every browser plg supports). */
export async function fetchWithTimeout(
  fetchFn: Fetch,
  url: string,
  init: RequestInit,
  timeoutMs: number,
): Promise<Response> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    return await fetchFn(url, { ...init, signal: controller.signal });
  } finally {
    clearTimeout(timer);
  }
}

export const trimSlash = (url: string): string => url.replace(/\/+$/, "");
