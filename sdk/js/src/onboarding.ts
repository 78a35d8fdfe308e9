/**
 * Onboarding and activation from the page. Every call has a short timeout and any failure (the growth
 * service down, slow, an error answer) is "no step" / false: the product never breaks because of it.
 */

import { backoffMs, type Fetch, fetchWithTimeout, trimSlash } from "./http.js";
import { readEventStream } from "./sse.js";

export interface Step {
  id: string;
  title?: string;
  intent?: string | null;
  priority?: number;
  [more: string]: unknown;
}

export interface ActivationEvent {
  [field: string]: unknown;
}

export interface OnboardingOptions {
  host: string;
  customerId?: string;
  apiKey?: string;
  fetch?: Fetch;
  timeoutMs?: number;
}

export class Onboarding {
  private readonly fetchFn: Fetch;
  private readonly host: string;

  constructor(
    private readonly options: OnboardingOptions,
    private readonly person: () => string,
  ) {
    this.fetchFn = options.fetch ?? ((...args) => fetch(...args));
    this.host = trimSlash(options.host);
  }

  private path(): string | null {
    const customer = this.options.customerId;
    if (!customer) return null;
    return `${encodeURIComponent(customer)}/${encodeURIComponent(this.person())}`;
  }

  private headers(): Record<string, string> {
    const h: Record<string, string> = { Accept: "application/json" };
    if (this.options.apiKey) h.Authorization = `Bearer ${this.options.apiKey}`;
    return h;
  }

  /** The recommended next step, or null: none left, or the service cannot answer now. */
  async next(options: { intent?: string } = {}): Promise<Step | null> {
    const ids = this.path();
    if (!ids) return null;
    const query = options.intent ? `?intent=${encodeURIComponent(options.intent)}` : "";
    try {
      const response = await fetchWithTimeout(
        this.fetchFn,
        `${this.host}/v1/onboarding/${ids}/next${query}`,
        { headers: this.headers(), credentials: "omit" },
        this.options.timeoutMs ?? 1500,
      );
      if (!response.ok) return null;
      const body = (await response.json()) as { step?: Step | null };
      return body.step && typeof body.step === "object" ? body.step : null;
    } catch {
      return null;
    }
  }

  /** Record a completed step (idempotent); false when it could not be recorded now (call again later). */
  async complete(step: string | Step): Promise<boolean> {
    const ids = this.path();
    if (!ids) return false;
    const id = typeof step === "string" ? step : step.id;
    try {
      const response = await fetchWithTimeout(
        this.fetchFn,
        `${this.host}/v1/onboarding/${ids}/steps/${encodeURIComponent(id)}/complete`,
        { method: "POST", headers: this.headers(), credentials: "omit" },
        this.options.timeoutMs ?? 1500,
      );
      return response.ok;
    } catch {
      return false;
    }
  }

  /** Follow the person's activation crossings (`show-upgrade-prompt` events); returns an unsubscribe. A
   * dropped stream reconnects with backoff; nothing is thrown at the app. */
  onActivation(cb: (event: ActivationEvent) => void): () => void {
    const controller = new AbortController();
    const run = async () => {
      let attempt = 0;
      while (!controller.signal.aborted) {
        const ids = this.path();
        if (!ids) return;
        try {
          const response = await this.fetchFn(`${this.host}/v1/activation/${ids}/stream`, {
            headers: { ...this.headers(), Accept: "text/event-stream" },
            signal: controller.signal,
            credentials: "omit",
          });
          if (response.ok) {
            attempt = 0;
            await readEventStream(
              response,
              (m) => {
                if (m.event !== "show-upgrade-prompt") return;
                try {
                  cb(JSON.parse(m.data) as ActivationEvent);
                } catch {
                  // a listener's error, or a message that is not JSON: skip it
                }
              },
              controller.signal,
            );
          }
        } catch {
          // reconnect below
        }
        attempt++;
        await new Promise((r) => setTimeout(r, backoffMs(attempt, 1000, 30_000)));
      }
    };
    void run();
    return () => controller.abort();
  }
}
