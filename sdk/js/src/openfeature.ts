/**
 * An OpenFeature web provider over plg's local flag evaluation (`@plg/sdk/openfeature`; dist/openfeature.js).
 *
 *     import { OpenFeature } from "@openfeature/web-sdk";
 *     import { plg } from "@plg/sdk";
 *     import { PlgWebProvider } from "@plg/sdk/openfeature";
 *     plg.init({ apiKey, host, growthHost });
 *     await OpenFeature.setProviderAndWait(new PlgWebProvider(plg));
 *     OpenFeature.getClient().getBooleanValue("new_dashboard", false);
 *
 * OpenFeature's static-context paradigm: the context set with `OpenFeature.setContext` (its `targetingKey`
 * is plg's `user_id`) is merged over plg's own (identify traits, flags.setContext). A separate entry point, so
 * the script-tag bundle carries none of OpenFeature.
 */

import {
  type EvaluationContext,
  type JsonValue,
  OpenFeatureEventEmitter,
  type Provider,
  ProviderEvents,
  type ResolutionDetails,
  ErrorCode,
} from "@openfeature/web-sdk";
import type { Context, FlagValue, ValueType } from "./engine.js";
import type { Plg } from "./index.js";

function toContext(ctx: EvaluationContext): Context {
  const out: Context = {};
  for (const [k, v] of Object.entries(ctx)) {
    if (k === "targetingKey") {
      if (v !== undefined) out.user_id = v;
    } else if (v !== undefined) out[k] = v instanceof Date ? v.toISOString() : v;
  }
  return out;
}

const ERRORS: Record<string, ErrorCode> = {
  FLAG_NOT_FOUND: ErrorCode.FLAG_NOT_FOUND,
  TYPE_MISMATCH: ErrorCode.TYPE_MISMATCH,
  PARSE_ERROR: ErrorCode.PARSE_ERROR,
  PROVIDER_NOT_READY: ErrorCode.PROVIDER_NOT_READY,
  GENERAL: ErrorCode.GENERAL,
};

export class PlgWebProvider implements Provider {
  readonly metadata = { name: "plg" } as const;
  readonly runsOn = "client" as const;
  readonly events = new OpenFeatureEventEmitter();
  private unsubscribe: (() => void) | null = null;

  constructor(private readonly client: Plg) {}

  async initialize(): Promise<void> {
    this.unsubscribe = this.client.flags.onChange((changed) =>
      this.events.emit(ProviderEvents.ConfigurationChanged, { flagsChanged: changed }),
    );
    await this.client.flags.ready();
  }

  async onClose(): Promise<void> {
    this.unsubscribe?.();
  }

  private resolve<T extends FlagValue>(key: string, def: T, type: ValueType, ctx: EvaluationContext): ResolutionDetails<T> {
    const answer = this.client.flags.evaluate<T>(key, def, type, toContext(ctx));
    const details: ResolutionDetails<T> = {
      value: answer.value,
      reason: answer.reason,
      flagMetadata: answer.version !== undefined ? { version: answer.version } : {},
    };
    if (answer.variant !== null) details.variant = answer.variant;
    if (answer.errorCode) {
      details.errorCode = ERRORS[answer.errorCode] ?? ErrorCode.GENERAL;
      details.errorMessage = answer.errorMessage;
    }
    return details;
  }

  resolveBooleanEvaluation(key: string, def: boolean, ctx: EvaluationContext): ResolutionDetails<boolean> {
    return this.resolve(key, def, "boolean", ctx);
  }

  resolveStringEvaluation(key: string, def: string, ctx: EvaluationContext): ResolutionDetails<string> {
    return this.resolve(key, def, "string", ctx);
  }

  resolveNumberEvaluation(key: string, def: number, ctx: EvaluationContext): ResolutionDetails<number> {
    return this.resolve(key, def, "number", ctx);
  }

  resolveObjectEvaluation<T extends JsonValue>(key: string, def: T, ctx: EvaluationContext): ResolutionDetails<T> {
    return this.resolve(key, def as FlagValue, "object", ctx) as ResolutionDetails<T>;
  }
}
