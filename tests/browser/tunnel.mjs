// An operator on an SSH tunnel (`ssh -L 8000:127.0.0.1:8000 host`) against
// a production server whose public URL is https: Debian's Chromium browses
// http://localhost:PORT, signs in (the __Host- session cookie is Secure)
// and submits a form. For tests/system/browser.rs; exits non-zero, naming
// the step, on the first failure.
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const base = env("FNX_URL");
let step = "start";
const browser = await chromium.launch({
  executablePath: process.env.FNX_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  const page = await (await browser.newContext()).newPage();
  page.setDefaultTimeout(15000);
  step = "sign in";
  await page.goto(base + "/login");
  await page.fill("input[name=name]", env("FNX_USER"));
  await page.fill("input[name=password]", env("FNX_PASSWORD"));
  await Promise.all([page.waitForURL(base + "/"), page.click("button[type=submit]")]);
  step = "a form";
  await page.goto(base + "/tokens");
  await page.fill("form[action='/tokens'] input[name=name]", "through-the-tunnel");
  await Promise.all([page.waitForLoadState("load"), page.click("form[action='/tokens'] button[type=submit]")]);
  const shown = await page.locator("#new-token").innerText();
  if (!shown.startsWith("fnx_")) throw new Error(`no new token shown: ${await page.content()}`);
  console.log("tunnel: signed in and created a token");
} catch (e) {
  console.error(`tunnel: failed at ${step}: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
