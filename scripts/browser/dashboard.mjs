// The dashboard in a real browser (Debian's chromium, driven by playwright-core), as a
// clinician uses it. Started by crates/osler/tests/dashboard.rs, which runs the hub and
// answers this script's "STEP …" lines on standard input (posting a reading, restarting the
// hub). Every wait has a deadline; any failure exits non-zero with the reason.
//
// Environment: OSLER_ROOT (https://127.0.0.1:PORT), OSLER_NAME, OSLER_PASSWORD, OSLER_TOTP
// (the base32 TOTP secret), OSLER_ARTIFACTS (a directory for screenshots and reports),
// OSLER_PATIENT (the patient whose alert is raised), CHROMIUM (default /usr/bin/chromium).

import { createHmac } from "node:crypto";
import { readFileSync, mkdirSync, writeFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const root = env("OSLER_ROOT");
const artifacts = env("OSLER_ARTIFACTS");
const patient = env("OSLER_PATIENT");
mkdirSync(artifacts, { recursive: true });
const WAIT = 20_000;

// RFC 6238 TOTP (SHA-1, 30 s, 6 digits), as an authenticator app computes it.
function base32(s) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0, value = 0;
  const out = [];
  for (const c of s.replace(/=+$/, "").toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 255); bits -= 8; }
  }
  return Buffer.from(out);
}
function totp(secret, offsetSteps = 0) {
  const step = Math.floor(Date.now() / 1000 / 30) + offsetSteps;
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(step));
  const h = createHmac("sha1", base32(secret)).update(msg).digest();
  const o = h[h.length - 1] & 15;
  const n = ((h[o] & 127) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1_000_000).padStart(6, "0");
}

// The test harness answers each STEP line with one line on standard input.
const input = createInterface({ input: process.stdin });
const replies = [];
const waiting = [];
input.on("line", (l) => (waiting.length ? waiting.shift()(l) : replies.push(l)));
function step(name) {
  console.log(`STEP ${name}`);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer to STEP ${name} in 60 s`)), 60_000);
    const done = (l) => { clearTimeout(t); resolve(l); };
    if (replies.length) done(replies.shift()); else waiting.push(done);
  });
}

// axe-core's WCAG 2.x A/AA rules on the page as it is; serious or critical violations fail.
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
async function accessible(page, name) {
  // Evaluated through the debugging protocol, so the page's Content-Security-Policy (no
  // inline scripts) stays as it is in production.
  await page.evaluate(axeSource);
  const result = await page.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"] } }));
  writeFileSync(`${artifacts}/axe-${name}.json`, JSON.stringify(result.violations, null, 2));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    throw new Error(`${name}: accessibility violations: ` +
      bad.map((v) => `${v.id} (${v.impact}) at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`).join("; "));
  }
  console.log(`AXE ${name} ok (${result.passes.length} rules pass, ${result.violations.length} minor)`);
}

async function shot(page, name) {
  await page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // The hub's certificate is from its own CA, which this fresh browser profile does not hold.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // Signing in: a page asked without a session goes to the password, then the second factor.
  await page.goto(`${root}/ui/worklist`);
  if (!page.url().includes("/ui/login")) throw new Error(`not sent to sign in: ${page.url()}`);
  await accessible(page, "login");
  await page.getByLabel("Name").fill(env("OSLER_NAME"));
  await page.getByLabel("Password").fill("a wrong password");
  await page.getByRole("button", { name: "Continue" }).click();
  await page.getByRole("alert").filter({ hasText: "wrong name or password" }).waitFor();
  await page.getByLabel("Name").fill(env("OSLER_NAME"));
  await page.getByLabel("Password").fill(env("OSLER_PASSWORD"));
  await page.getByRole("button", { name: "Continue" }).click();
  await page.getByRole("heading", { name: "Second factor" }).waitFor();
  await page.getByLabel("Code from your authenticator app").fill(totp(env("OSLER_TOTP")));
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Worklist" }).waitFor();
  console.log("SIGNED-IN");
  await shot(page, "1-worklist-signed-in");

  // An alert raised now appears on the worklist without a reload.
  await page.evaluate(() => { window.oslerMarker = "same page"; });
  await step("raise");
  const row = page.locator(`#row-${patient}`);
  const card = row.locator(".alert.critical");
  await card.waitFor();
  if ((await page.evaluate(() => window.oslerMarker)) !== "same page") throw new Error("the page reloaded");
  console.log("ALERT-LIVE");
  // The page told the hub it has the alert: the nurse's response is "delivered".
  await step("delivered");
  // An emergency a gateway announces (before it is stored) shows at once, in words.
  await step("notice");
  await page.getByRole("alert").filter({ hasText: "EMERGENCY: Fall detected, patient p1" }).waitFor();
  console.log("NOTICE-LIVE");
  await shot(page, "2-worklist-live-alert");
  await accessible(page, "worklist");

  // Acknowledge, then snooze, from the row.
  await card.getByRole("button", { name: "Acknowledge" }).click();
  await row.getByText("you: acknowledged").waitFor();
  await row.getByLabel("Snooze").selectOption("15");
  await row.getByRole("button", { name: "Snooze" }).click();
  await row.getByText(/snoozed until/).waitFor();
  console.log("ACKED-AND-SNOOZED");
  await shot(page, "3-worklist-acked-snoozed");

  // The hub restarts; the snooze is still there.
  await step("restart");
  await page.reload();
  await page.locator(`#row-${patient}`).getByText(/snoozed until/).waitFor();
  console.log("SNOOZE-SURVIVED-RESTART");
  await shot(page, "4-worklist-after-restart");

  // The inbox and the patient page, with a note logged.
  await page.getByRole("link", { name: "Alert inbox" }).click();
  await page.getByRole("heading", { name: "Alert inbox" }).waitFor();
  await accessible(page, "inbox");
  await shot(page, "5-inbox");
  await page.goto(`${root}/ui/patients/${patient}?range=7d`);
  await page.locator("svg.chart").first().waitFor();
  await page.getByLabel("Kind").selectOption("call");
  await page.getByLabel("Minutes spent").fill("12");
  await page.getByLabel("Note", { exact: true }).fill("Called about the high pressure; taking medication again.");
  await page.getByRole("button", { name: "Add to the timeline" }).click();
  await page.getByRole("status").filter({ hasText: "Call added to the timeline." }).waitFor();
  await page.locator(".timeline li").filter({ hasText: "12 min" }).first().waitFor();
  await accessible(page, "patient");
  await shot(page, "6-patient");

  // Keyboard: j moves focus to a worklist row.
  await page.goto(`${root}/ui/worklist`);
  await page.keyboard.press("j");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
  if (!focused || !focused.startsWith("row-")) throw new Error(`j focused ${focused}`);
  console.log("KEYBOARD ok");

  if (errors.length) throw new Error(`script errors on the page: ${errors.join("; ")}`);
  console.log("DONE");
} finally {
  await browser.close();
  input.close();
}
