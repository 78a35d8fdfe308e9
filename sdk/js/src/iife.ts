/** The script-tag build (dist/plg.iife.js): defines `window.plg`. */
import { Plg, plg } from "./index.js";

declare global {
  interface Window {
    plg: Plg;
    Plg: typeof Plg;
  }
}

window.plg = plg;
window.Plg = Plg;
