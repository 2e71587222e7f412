// Drives the AMG web console in a real headless Chromium for the browser
// tests in internal/gateway (console_browser_test.go), one scenario per
// run. The Go test starts the gateway, the MCP agent and this script, and
// checks what the agent saw; this script does what an operator would do
// and checks what the console shows.
//
// Usage: node console.mjs approve|deny|revoke|tour
// Environment:
//   AMG_CONSOLE      base URL of the admin listener, e.g. http://127.0.0.1:8081
//   AMG_ADMIN_TOKEN  the admin token
//   AMG_NPM_DIR      the npm directory scripts/setup installs playwright-core into
//   AMG_CHROMIUM     the chromium binary
//   AMG_ARTIFACTS    where screenshots go
//   AMG_TOOL         approve, deny: the parked call's tool (server__tool)
//   AMG_AGENT        revoke: the agent whose token to revoke
//   AMG_POLICY_FILES tour: the role files to replay the audit log against,
//                    separated by the platform's path delimiter
//
// It prints one JSON object per line: {"event": "ready"} once signed in
// and watching, then what it did. It exits non-zero, with the reason on
// stderr, when anything is not as expected.
import { createRequire } from "node:module";
import path from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const require = createRequire(path.join(env("AMG_NPM_DIR"), "package.json"));
const { chromium } = require("playwright-core");

const base = env("AMG_CONSOLE");
const artifacts = env("AMG_ARTIFACTS");
const emit = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const check = (cond, msg) => {
  if (!cond) throw new Error(msg);
};

async function shot(page, name) {
  await page.screenshot({ path: path.join(artifacts, name + ".png"), fullPage: true });
}

async function signIn(page, errors) {
  await page.goto(base + "/console/approvals");
  check(page.url().includes("/console/signin"), `an anonymous visit was not sent to sign in: ${page.url()}`);
  await page.fill("input[name=name]", "browser-test");
  await page.fill("input[name=token]", "amgadm_wrong".padEnd(71, "0"));
  await page.click("button[type=submit]");
  await page.getByTestId("problem").waitFor();
  await shot(page, "signin-refused");
  errors.length = 0; // the refusal's 401, which the browser reports
  await page.fill("input[name=token]", env("AMG_ADMIN_TOKEN"));
  await page.click("button[type=submit]");
  await page.waitForURL(/\/console\/approvals$/);
  check((await page.getByTestId("operator").textContent()) === "browser-test", "the console does not show who signed in");
}

// decide waits for the parked call to appear in the queue, without
// reloading the page, and approves or denies it.
async function decide(page, verdict) {
  const tool = env("AMG_TOOL");
  // A reload would lose this mark; the queue must update by itself.
  await page.evaluate(() => (window.amgMark = "no reload"));
  emit({ event: "ready" });
  const card = page.locator(`[data-testid=approval][data-tool="${tool}"]`).first();
  await card.waitFor({ timeout: 20000 });
  check((await page.evaluate(() => window.amgMark)) === "no reload", "the page was reloaded to show the parked call");
  const id = await card.getAttribute("data-id");
  const payload = await card.getByTestId("payload").textContent();
  check(payload.includes(`"tools/call"`), `the payload does not show the call: ${payload}`);
  // The countdown ticks.
  const countdown = card.getByTestId("countdown");
  const before = await countdown.textContent();
  await page.waitForFunction(
    ([sel, was]) => document.querySelector(sel)?.textContent !== was,
    [`[data-id="${id}"] [data-testid=countdown]`, before],
    { timeout: 5000 },
  );
  await shot(page, `approvals-pending-${verdict}`);
  await card.getByTestId("reason").fill(verdict === "approve" ? "checked the page id" : "not this page");
  // Enter in the reason decides nothing: only a click on Approve or Deny
  // does. The queue's next refresh shows the page is still there.
  const posts = [];
  const onRequest = (r) => r.method() === "POST" && posts.push(r.url());
  page.on("request", onRequest);
  await card.getByTestId("reason").press("Enter");
  await page.waitForRequest((r) => r.url().endsWith("/console/approvals/rows"), { timeout: 10000 });
  page.off("request", onRequest);
  check(posts.length === 0, `Enter in the reason posted to ${posts.join(", ")}`);
  check((await page.evaluate(() => window.amgMark)) === "no reload", "Enter in the reason left the page");
  await card.getByTestId(verdict).click();
  await page.getByTestId("notice").waitFor();
  const notice = await page.getByTestId("notice").textContent();
  check(notice.includes(id), `the notice does not name ${id}: ${notice}`);
  const row = page.locator(`[data-testid=recent][data-id="${id}"]`);
  await row.waitFor();
  // An approved call is soon executed: either state shows it went ahead.
  const state = verdict === "approve" ? "approved" : "denied";
  const shown = await row.textContent();
  const ok = verdict === "approve" ? /approved|executed/.test(shown) : shown.includes("denied");
  check(ok, `${id} is not listed as ${state}: ${shown}`);
  await shot(page, `approvals-${state}`);
  emit({ event: state, id });
}

async function revoke(page) {
  const agent = env("AMG_AGENT");
  await page.goto(base + "/console/tokens");
  const row = page.locator(`[data-testid=token][data-agent="${agent}"]`).first();
  await row.waitFor();
  const id = await row.getAttribute("data-id");
  check((await row.textContent()).includes("active"), `${agent}'s token is not active before revoking`);
  await shot(page, "tokens");
  page.once("dialog", (d) => d.accept());
  await row.getByTestId("revoke").click();
  await page.getByTestId("notice").waitFor();
  const after = page.locator(`[data-testid=token][data-id="${id}"]`);
  check((await after.textContent()).includes("revoked"), `${id} is not shown revoked`);
  await shot(page, "tokens-revoked");
  emit({ event: "revoked", id });
}

// tour visits every page, at a laptop's size and a phone's, checks each
// shows its data, and saves a screenshot of each.
async function tour(page, phone) {
  emit({ event: "ready" });
  await page.goto(base + "/console/audit");
  check((await page.getByTestId("audit-row").count()) > 0, "the audit page lists no records");
  await shot(page, "audit");
  await page.goto(base + "/console/audit?verdict=deny");
  const denied = await page.getByTestId("audit-row").allTextContents();
  check(denied.length > 0 && denied.every((t) => t.includes("deny")), "searching by verdict deny shows other verdicts");
  await page.getByTestId("audit-row").first().locator("a").first().click();
  await page.getByTestId("record").first().waitFor();
  await shot(page, "audit-record");

  await page.goto(base + "/console/shadow");
  await page.getByTestId("shadow-chart").waitFor();
  const loaded = await page.getByTestId("shadow-chart").evaluate((img) => img.complete && img.naturalWidth > 0);
  check(loaded, "the shadow chart did not load");
  await shot(page, "shadow");

  await page.goto(base + "/console/policy");
  check((await page.getByTestId("tool").count()) > 0, "the policy page lists no upstream tools");
  await shot(page, "policy");

  await page.goto(base + "/console/replay");
  await page.setInputFiles("input[type=file]", env("AMG_POLICY_FILES").split(path.delimiter));
  await page.getByTestId("replay-upload").locator("button").click();
  await page.getByTestId("replay-report").waitFor();
  const summary = await page.getByTestId("replay-summary").textContent();
  emit({ event: "replayed", summary: summary.replace(/\s+/g, " ").trim() });
  await shot(page, "replay");

  await page.goto(base + "/console/tokens");
  await shot(page, "tokens-list");
  await page.goto(base + "/console/approvals");
  await shot(page, "approvals");

  await phone.goto(base + "/console/approvals");
  await shot(phone, "phone-approvals");
  await phone.goto(base + "/console/audit");
  await shot(phone, "phone-audit");
  await phone.goto(base + "/console/shadow");
  await shot(phone, "phone-shadow");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the shadow page is ${overflow}px wider than a phone`);
  emit({ event: "toured" });
}

const browser = await chromium.launch({
  executablePath: env("AMG_CHROMIUM"),
  args: ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const laptop = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await laptop.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await signIn(page, errors);
  const scenario = process.argv[2];
  switch (scenario) {
    case "approve":
    case "deny":
      await decide(page, scenario);
      break;
    case "revoke":
      await revoke(page);
      break;
    case "tour": {
      const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
      const p = await phone.newPage();
      // The phone signs in with the session of the laptop.
      await phone.addCookies(await laptop.cookies());
      await tour(page, p);
      break;
    }
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
  check(errors.length === 0, `the page logged errors: ${errors.join("; ")}`);
} catch (e) {
  failed = true;
  process.stderr.write(`console.mjs: ${e.stack || e}\n`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
