// Drives Debian's Chromium through the dashboard as an operator would, for
// tests/system/browser.rs, which starts the server and the simulated devices
// and passes everything in FNX_* variables. Exits non-zero, naming the step,
// on the first failure; every console error, page error and CSP violation
// is a failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (v === undefined) throw new Error(`${name} is not set`);
  return v;
};
const base = env("FNX_URL");
const out = env("FNX_OUT");
const device = env("FNX_DEVICE");
const hostile = JSON.parse(env("FNX_HOSTILE")); // { endpoint, strings: [...] }
const firmware = { file: env("FNX_FIRMWARE"), sha256: env("FNX_FIRMWARE_SHA256") };
const wakaama = process.env.FNX_WAKAAMA || ""; // a real client's endpoint, when one runs
mkdirSync(out, { recursive: true });

const problems = [];
let step = "start";
const TIMEOUT = 15000;

const browser = await chromium.launch({
  executablePath: process.env.FNX_CHROMIUM || "/usr/bin/chromium",
  // The machine's network is closed: no background fetches, no sandbox as root.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
// The operator's browser is in Berlin; the dashboard shows UTC until
// they switch to their own zone.
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, timezoneId: "Europe/Berlin" });
context.setDefaultTimeout(TIMEOUT);


// Console errors and warnings, page errors and stray dialogs are failures.
function watch(p) {
  p.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") problems.push(`${step}: console ${m.type()}: ${m.text()}`);
  });
  p.on("pageerror", (e) => problems.push(`${step}: page error: ${e.message}`));
  p.on("dialog", (d) => {
    // Only the dashboard's own confirmations are expected; an alert() is an XSS.
    if (d.type() !== "confirm") problems.push(`${step}: unexpected ${d.type()} dialog: ${d.message()}`);
    d.accept();
  });
}

async function watchViolations(ctx) {
  await ctx.exposeBinding("__fnxViolation", (_source, v) => {
    problems.push(`${step}: CSP violation: ${v}`);
  });
  await ctx.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__fnxViolation(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
    });
  });
}

// CSP violations reach us through a binding, which Playwright installs over
// CDP, outside the page's policy.
await watchViolations(context);
const page = await context.newPage();
watch(page);

async function shot(name) {
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

// Nothing a device sent may have become markup or script.
async function nothingExecuted() {
  const found = await page.evaluate(() => ({
    xss: window.__xss === undefined ? null : String(window.__xss),
    inlineScripts: document.querySelectorAll("script:not([src])").length,
    handlers: [...document.querySelectorAll("*")].filter((e) => [...e.attributes].some((a) => a.name.startsWith("on")))
      .length,
    injected: document.querySelectorAll("img[src='x'], svg[onload], iframe, object, embed").length,
  }));
  check(found.xss === null, `${step}: a payload executed: window.__xss = ${found.xss}`);
  check(found.inlineScripts === 0, `${step}: ${found.inlineScripts} inline script elements`);
  check(found.handlers === 0, `${step}: ${found.handlers} elements with on* attributes`);
  check(found.injected === 0, `${step}: ${found.injected} injected elements`);
}

async function visit(name, path) {
  step = name;
  const r = await page.goto(base + path);
  check(r.status() === 200, `${name}: ${path} answered ${r.status()}`);
  await nothingExecuted();
  await shot(name);
}

const rowOf = (path) => page.locator("#operations tbody tr", { has: page.locator("td.mono", { hasText: path }) });

// The operations table's row of exactly `path` (not `/3/0/13` for `/3/0/1`).
const exactRow = (kind, path) =>
  page.locator("#operations tbody tr")
    .filter({ has: page.locator("td.mono", { hasText: new RegExp(`^${path}$`) }) })
    .filter({ hasText: kind });

// Press an object tree button (after `prepare` fills its inputs) and wait,
// without reloading, for the operation to succeed.
// Objects without values start folded: open one as a person would.
async function unfold(object) {
  if (!(await object.evaluate((d) => d.open))) await object.locator(":scope > summary").click();
}
async function treeOp(op, path, prepare) {
  step = `tree ${op} ${path}`;
  await unfold(page.locator(`details.object:has(button[data-op="${op}"][data-path="${path}"])`));
  if (prepare) await prepare();
  await Promise.all([
    page.waitForURL(/done=queued/),
    page.click(`#objects button[data-op="${op}"][data-path="${path}"]`),
  ]);
  await page.waitForSelector("body[data-live-connected=yes]");
  await exactRow(op, path).first().locator(".badge.succeeded").waitFor();
}
const cell = (path) => page.locator(`#r${path.replaceAll("/", "-")} td.value`);
async function shows(path, want, what) {
  step = `shows ${path}`;
  await page.waitForFunction(
    ([sel, w]) => (document.querySelector(sel)?.innerText || "").includes(w),
    [`#r${path.replaceAll("/", "-")} td.value`, want],
  ).catch(async () => check(false, `${what}: ${path} shows "${await cell(path).innerText()}", not "${want}"`));
}

// Queue an operation through the device page's form and wait, without
// reloading, for the live refresh to show it succeeded.
async function operate(op, path, value) {
  step = `${op} ${path}`;
  await page.selectOption("#op", op);
  await page.fill("#op-path", path);
  await page.fill("#op-value", value ?? "");
  await Promise.all([page.waitForURL(/\/devices\//), page.click("#op-submit")]);
  await page.waitForSelector("body[data-live-connected=yes]");
  await rowOf(path).first().locator(".badge.succeeded").waitFor();
}

try {
  // Signed out, every page leads to the login form.
  step = "login";
  await page.goto(base + "/devices");
  check(new URL(page.url()).pathname === "/login", `signed out, /devices went to ${page.url()}`);
  await shot("login");
  await page.fill("input[name=name]", env("FNX_USER"));
  await page.fill("input[name=password]", env("FNX_PASSWORD"));
  await Promise.all([page.waitForURL(base + "/"), page.click("button[type=submit]")]);
  await nothingExecuted();
  await shot("overview");

  await visit("devices", "/devices");
  check((await page.locator(`a:text-is("${device}")`).count()) === 1, "the simulated device is not listed");
  for (const s of [hostile.endpoint]) {
    check((await page.getByText(s, { exact: true }).count()) >= 1, `devices: ${s} is not shown as text`);
  }

  // Bulk actions: a tag on every device matching a filter (100, on four
  // pages), confirmed after the count is shown; then a Read on the 25
  // ticked on one page.
  step = "bulk tag";
  await visit("devices-bulk", "/devices?tag=fleet-b&limit=25");
  check((await page.locator("#devices tbody tr").count()) === 25, "the filtered page does not hold 25 devices");
  await page.click("#bulk summary");
  await page.check("#bulk-scope-filter");
  await page.selectOption("#bulk-action", "add-tag");
  await page.fill("#bulk-tag", "wave-1");
  await Promise.all([page.waitForURL(/\/devices\/bulk/), page.click("#bulk-review")]);
  check((await page.locator("#bulk-count").innerText()).trim() === "100", `the confirmation counts ${await page.locator("#bulk-count").innerText()}`);
  await shot("bulk-confirm");
  await Promise.all([page.waitForURL(/done=tagged/), page.click("#bulk-confirm-button")]);
  check(
    (await page.locator("#devices tbody tr", { hasText: "wave-1" }).count()) === 25,
    "the tagged devices do not show their new tag",
  );
  step = "bulk read";
  await page.click("#bulk summary");
  await page.check("thead input[data-select-all]");
  check((await page.locator("#devices tbody input[name=ep]:checked").count()) === 25, "tick-all did not tick the page");
  await page.selectOption("#bulk-action", "read");
  await page.fill("#bulk-path", "/3/0");
  await Promise.all([page.waitForURL(/\/devices\/bulk/), page.click("#bulk-review")]);
  check((await page.locator("#bulk-count").innerText()).trim() === "25", "the ticked rows are not what is confirmed");
  check((await page.locator("#bulk-what").innerText()).includes("Read /3/0"), "the confirmation does not say what");
  await Promise.all([page.waitForURL(/done=bulk-queued/), page.click("#bulk-confirm-button")]);
  await nothingExecuted();

  step = "device";
  await visit("devices", "/devices");
  await Promise.all([page.waitForURL(/\/devices\/sensor/), page.click(`a:text-is("${device}")`)]);
  await operate("read", "/3/0");
  check(
    (await cell("/3/0/1").innerText()).trim() === "nRF9160-SIM",
    "the model name read from /3/0/1 is not shown",
  );
  await operate("write", "/3/0/15", "Europe/Berlin");
  await operate("read", "/3/0/15");
  check(
    (await cell("/3/0/15").innerText()).trim() === "Europe/Berlin",
    "the written time zone did not read back",
  );
  await operate("execute", "/3303/0/5605");
  // Write-Composite from the form: one iPATCH with both values.
  step = "write-composite";
  await page.selectOption("#op", "write-composite");
  await page.fill("#op-path", "");
  await page.fill("#op-assignments", "/3/0/15=Europe/Paris\n/1/0/1=200");
  await Promise.all([page.waitForURL(/\/devices\//), page.click("#op-submit")]);
  await page.waitForSelector("body[data-live-connected=yes]");
  await page.locator("#operations tbody tr", { hasText: "write-composite" }).first().locator(".badge.succeeded").waitFor();
  await operate("read", "/3/0/15");
  check(
    (await cell("/3/0/15").innerText()).trim() === "Europe/Paris",
    "the composite write did not read back",
  );
  await nothingExecuted();
  await shot("device");

  // History: two resources on one chart with a legend; observed from the
  // object tree, the temperature's line follows its notifications live.
  await treeOp("observe", "/3303/0/5700");
  step = "history";
  await page.check('#history-form input[value="/3303/0/5700"]');
  await page.check('#history-form input[value="/3/0/9"]');
  // Over an hour a slice is 6 s: the notifications add a point every few seconds.
  await page.selectOption("#history-range", "1h");
  await Promise.all([page.waitForURL(/chart=.*chart=/), page.click("#history-form button[type=submit]")]);
  check((await page.locator("#history svg polyline.series-1").count()) === 1, "the second resource has no line");
  const legend = await page.locator("#history ul.legend").innerText();
  check(legend.includes("Battery Level") && legend.includes("(°C)"), `the legend says ${legend}`);
  // The temperature's line (its <title> names it), redrawn as values come.
  const tempLine = () =>
    page.evaluate(() =>
      [...document.querySelectorAll("#history svg polyline")]
        .find((l) => l.querySelector("title")?.textContent.includes("/3303/0/5700"))
        ?.getAttribute("points"),
    );
  const drawn = await tempLine();
  check(!!drawn, "the temperature has no line");
  await page.waitForFunction(
    (b) =>
      [...document.querySelectorAll("#history svg polyline")]
        .find((l) => l.querySelector("title")?.textContent.includes("/3303/0/5700"))
        ?.getAttribute("points") !== b,
    drawn,
    { timeout: 20000 },
  );
  await shot("device-history");

  // The object tree on a real LwM2M client (Eclipse Wakaama): a button per
  // resource for each operation the object model allows, typed inputs.
  if (wakaama) {
    await visit("wakaama", `/devices/${encodeURIComponent(wakaama)}`);
    check(await page.locator("#o-3 summary", { hasText: "Device" }).isVisible(), "the tree has no Device object");
    // Device is open from the start; an object with no values nor
    // observations is folded to its summary line, and opens on a click.
    step = "folded objects";
    check(await page.locator("#o-3").evaluate((d) => d.open), "Device is folded");
    check(!(await page.locator("#o-31024").evaluate((d) => d.open)), "an object with no values is open");
    check(
      /instances? · 0 values/.test(await page.locator("#o-31024 > summary").innerText()),
      "a folded object's summary does not count instances and values",
    );
    await unfold(page.locator("#o-1"));
    // The filter over resource names: only matching rows stay, their
    // objects open; clearing it shows everything again.
    step = "tree filter";
    await page.fill("#tree-filter", "lifetime");
    check(await page.locator("#r-1-0-1").isVisible(), "the filter hides Lifetime");
    check(!(await page.locator("#r-3-0-0").isVisible()), "the filter keeps Manufacturer");
    check(!(await page.locator("#o-3").isVisible()), "the filter keeps an object without a match");
    await page.fill("#tree-filter", "");
    check(await page.locator("#r-3-0-0").isVisible(), "a cleared filter still hides Manufacturer");
    check((await page.locator('#r-3-0-0 button[data-op="write"]').count()) === 0, "read-only Manufacturer offers Write");
    check((await page.locator('#r-3-0-4 button[data-op="execute"]').count()) === 1, "Reboot offers no Execute");
    check((await page.locator('#r-3-0-4 button[data-op="read"]').count()) === 0, "executable Reboot offers Read");
    await treeOp("read", "/3/0/0");
    await shows("/3/0/0", "Open Mobile Alliance", "Read");
    // A typed write: Lifetime is an integer, so a number field.
    check((await page.getAttribute("#value-r-1-0-1", "type")) === "number", "Lifetime's input is not a number field");
    await treeOp("write", "/1/0/1", () => page.fill("#value-r-1-0-1", "95"));
    await treeOp("read", "/1/0/1");
    await shows("/1/0/1", "95", "typed write of Lifetime");
    // Current Time is a Time: a date field, sent as seconds since 1970.
    check((await page.getAttribute("#value-r-3-0-13", "type")) === "datetime-local", "Current Time's input is not a date");
    await treeOp("write", "/3/0/13", () => page.fill("#value-r-3-0-13", "2027-01-02T03:04:05"));
    await treeOp("read", "/3/0/13");
    await shows("/3/0/13", "2027-01-02 03:0", "typed write of Current Time");
    await treeOp("execute", "/3/0/12");
    // Observe: the row is marked, the attributes are set, the mark goes
    // when the observation is cancelled.
    await treeOp("observe", "/3/0/9");
    await page.locator("#r-3-0-9 .badge.observed").waitFor();
    await page.click("#a-r-3-0-9 summary");
    await treeOp("write-attributes", "/3/0/9", async () => {
      await page.fill("#pmin-r-3-0-9", "1");
      await page.fill("#pmax-r-3-0-9", "30");
    });
    await treeOp("cancel-observe", "/3/0/9");
    await page.locator("#r-3-0-9 .badge.observed").waitFor({ state: "detached" });
    // Create an instance of the test object from its typed form, then
    // delete it (after the confirmation).
    await unfold(page.locator("#o-31024"));
    await page.click("#create-o31024 summary");
    await treeOp("create", "/31024", async () => {
      await page.fill("#instance31024", "20");
      await page.fill("#res-1-c-31024-1", "42");
      await page.fill("#res-3-c-31024-3", "2.5");
    });
    // Read back, the new instance joins the tree with its values.
    await operate("read", "/31024/20");
    await shows("/31024/20/1", "42", "the created instance");
    await treeOp("read", "/3/0");
    await shot("wakaama-tree");
    await treeOp("delete", "/31024/20");
    // The client announces its objects again (an Update); the deleted
    // instance leaves the tree, its old values with it.
    step = "deleted instance leaves the tree";
    await page.locator('section[data-instance="/31024/20"]').waitFor({ state: "detached", timeout: 20000 });
    await nothingExecuted();
  }

  // The device whose every string is a payload: all of it shown as text.
  await visit("device-hostile", `/devices/${encodeURIComponent(hostile.endpoint)}`);
  for (const s of [hostile.endpoint, ...hostile.strings]) {
    check((await page.getByText(s).count()) >= 1, `device-hostile: ${s} is not shown as text`);
  }
  await visit("events", "/events");
  // Part of an endpoint and a type from the drop-down; the rows say which
  // operation on which path ended how, in words.
  step = "events filter";
  await page.fill("#event-endpoint", device.slice(1, -1));
  await page.selectOption("#event-kind", "operation");
  await Promise.all([page.waitForURL(/kind=operation/), page.click("form[action='/events'] button[type=submit]")]);
  const kinds = await page.locator("[data-live] tbody tr .badge").allInnerTexts();
  check(kinds.length > 0 && kinds.every((k) => k.trim() === "operation"), `events filter: kinds ${JSON.stringify(kinds)}`);
  check(
    (await page.locator("[data-live] tbody td.detail", { hasText: "read /3/0 #" }).count()) >= 1,
    "an operation event does not say which operation on which path",
  );
  check(
    (await page.locator("[data-live] tbody td.detail", { hasText: "(2.05: content)" }).count()) >= 1,
    "an operation event does not explain its code",
  );
  await shot("events-filtered");
  await visit("overview-hostile", "/");

  step = "firmware";
  await visit("firmware", "/firmware");
  await page.fill("#upload-form input[name=name]", "app-update.bin");
  await page.fill("#upload-form input[name=version]", "2.0.0");
  await page.fill("#upload-form input[name=notes]", "browser upload");
  await page.setInputFiles("#upload-form input[name=file]", firmware.file);
  await Promise.all([page.waitForURL(/\/firmware\?done=uploaded/), page.click("#upload-form button[type=submit]")]);
  const row = page.locator("#firmware tbody tr", { hasText: "app-update.bin" });
  check((await row.count()) === 1, "the uploaded image is not listed");
  check((await row.innerText()).includes(firmware.sha256), "the listed SHA-256 is not the file's");
  await shot("firmware-uploaded");

  // Update the device to the uploaded image from its page; the timeline
  // fills in live until the update has verified the new version.
  step = "firmware update";
  await visit("device-update", `/devices/${encodeURIComponent(device)}`);
  await page.selectOption("#update-image", { label: "app-update.bin 2.0.0" });
  await Promise.all([page.waitForURL(/done=update-started/), page.click("#update-submit")]);
  for (let i = 0; i < 120; i++) {
    const badge = (await page.locator("#update-list tbody tr").first().locator(".badge").innerText()).trim();
    if (badge === "succeeded" || badge === "failed") break;
    await page.waitForTimeout(500);
    await page.reload();
  }
  const first = page.locator("#update-list tbody tr").first();
  check((await first.locator(".badge").innerText()).trim() === "succeeded", `the update ended ${await first.innerText()}`);
  check((await page.locator("#update-list .steps li").count()) >= 7, "the update's timeline is not shown");
  await nothingExecuted();
  await shot("device-updated");

  // A campaign from the form: the device already runs 2.0.0 and is
  // skipped; the page, rendered while the campaign still runs, turns to
  // "finished" by itself over the campaign's event stream.
  step = "campaign";
  await visit("campaigns", "/campaigns");
  await page.fill("#campaign-form input[name=name]", "browser campaign");
  await page.selectOption("#campaign-form select[name=image]", { label: "app-update.bin (2.0.0)" });
  await page.fill("#campaign-form input[name=devices]", device);
  await page.fill("#campaign-form input[name=waves]", "1,100%");
  await Promise.all([page.waitForURL(/\/campaigns\/\d+\?done=campaign-created/), page.click("#campaign-submit")]);
  await page.waitForFunction(
    () => document.querySelector("#campaign-state")?.textContent.trim() === "finished",
    null,
    { timeout: 20000 },
  );
  check((await page.locator("body").innerText()).includes("1 skipped"), "the skipped device is not counted");
  check((await page.locator("svg.chart").count()) >= 1, "no progress chart");
  await shot("campaign-finished");
  await visit("campaigns-list", "/campaigns");
  check((await page.locator("#campaigns tbody tr", { hasText: "browser campaign" }).count()) === 1, "the campaign is not listed");
  const campaignHref = await page.locator("#campaigns tbody tr a").first().getAttribute("href");

  // A device profile from its form: listed with its steps in words.
  step = "device profiles";
  await visit("device-profiles", "/device-profiles");
  await page.fill("#profile-form input[name=name]", "identity and temperature");
  await page.fill("#profile-form input[name=tag]", "fleet-b");
  await page.fill("#profile-form textarea[name=steps]", "read /3/0\nobserve /3303/0/5700 pmin=5 pmax=60");
  await Promise.all([page.waitForURL(/done=profile-saved/), page.click("#profile-submit")]);
  const listed = await page.locator("#profiles tbody").innerText();
  check(
    listed.includes("identity and temperature") && listed.includes("observe /3303/0/5700 pmin=5 pmax=60") && listed.includes("fleet-b"),
    `the new profile is not listed: ${listed}`,
  );
  // The onboarding profile every installation starts with, edited in place.
  step = "edit a profile";
  const onboarding = page.locator("#profiles tbody tr", { hasText: "onboarding" });
  await onboarding.locator("details.edit summary").click();
  await onboarding.locator("input[name=deadline_s]").fill("900");
  await Promise.all([page.waitForURL(/done=profile-saved/), onboarding.locator("details.edit button[type=submit]").click()]);
  const edited = await page.locator("#profiles tbody tr", { hasText: "onboarding" }).innerText();
  check(edited.includes("900 s") && edited.includes("observe /3/0/3"), `the edited profile is not listed: ${edited}`);
  await shot("device-profiles");

  await visit("users", "/users");
  await visit("profile", "/profile");
  await visit("tokens", "/tokens");
  // The API reference, rendered by the server from the OpenAPI document.
  step = "api reference";
  await Promise.all([page.waitForURL(/\/api$/), page.click("#api-reference")]);
  await nothingExecuted();
  check((await page.locator("section.op").count()) >= 30, "the API reference lists too few operations");
  check((await page.locator("code", { hasText: "/api/v1/devices/{endpoint}/values" }).count()) >= 1, "the values route is not described");
  await page.click("a[href='#value']");
  check(await page.locator("#value").isVisible(), "a schema link does not lead to its schema");
  await shot("api");

  // Preferences: this browser's own zone, chosen columns, a saved filter.
  step = "time zone";
  await visit("devices-utc", "/devices");
  check((await page.locator("#devices thead").innerText()).includes("(UTC)"), "the list is not in UTC at first");
  await Promise.all([page.waitForURL(/\/devices$/), page.click("#zone-toggle button")]);
  check(
    (await page.locator("#devices thead").innerText()).includes("(Europe/Berlin)"),
    "the list is not in the browser's zone after the toggle",
  );
  step = "columns";
  await page.click("#columns summary");
  for (const c of ["model", "signal", "battery"]) await page.check(`#columns input[value=${c}]`);
  await page.uncheck("#columns input[value=lifetime]");
  await Promise.all([page.waitForURL(/\/devices$/), page.click("#columns-save")]);
  const head = await page.locator("#devices thead").innerText();
  check(head.includes("Battery") && head.includes("Model") && !head.includes("Lifetime"), `columns: ${head}`);
  check(
    (await page.locator("#devices tbody tr", { hasText: device }).innerText()).includes("nRF9160-SIM"),
    "the model column does not show the device's model",
  );
  step = "saved filter";
  await page.goto(base + "/devices?tag=wave-1&limit=25");
  await page.fill("#save-filter-name", "first wave");
  await Promise.all([page.waitForURL(/done=filter-saved/), page.click("#save-filter button")]);
  await page.goto(base + "/devices");
  await Promise.all([page.waitForURL(/tag=wave-1/), page.click('[data-saved="first wave"]')]);
  check((await page.locator("#devices tbody tr").count()) === 25, "the saved filter does not list its devices");
  await nothingExecuted();
  await shot("devices-prefs");

  // The same operator on a phone: a 390 px mobile viewport, signed in with
  // the same session. No page is wider than the phone (the document's
  // scroll width, not innerWidth, which a mobile browser widens to the
  // content); the menu folds behind its toggle and opens with it. The
  // phone asks for a dark scheme (prefers-color-scheme) and gets one.
  step = "phone";
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 },
    colorScheme: "dark",
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 2,
    storageState: await context.storageState(),
  });
  phone.setDefaultTimeout(TIMEOUT);
  await watchViolations(phone);
  const mobile = await phone.newPage();
  watch(mobile);
  const phonePages = [
    ["overview", "/"],
    ["devices", "/devices"],
    ["device", `/devices/${encodeURIComponent(device)}`],
    ["device-hostile", `/devices/${encodeURIComponent(hostile.endpoint)}`],
    ["events", "/events"],
    ["firmware", "/firmware"],
    ["campaigns", "/campaigns"],
    ["device-profiles", "/device-profiles"],
    ["devices-filtered", "/devices?tag=fleet-b&limit=25"],
    ...(wakaama ? [["wakaama", `/devices/${encodeURIComponent(wakaama)}`]] : []),
    ["campaign", campaignHref],
    ["users", "/users"],
    ["profile", "/profile"],
    ["tokens", "/tokens"],
    ["api", "/api"],
  ];
  for (const [name, path] of phonePages) {
    step = `phone ${name}`;
    const r = await mobile.goto(base + path);
    check(r.status() === 200, `${step}: ${path} answered ${r.status()}`);
    const width = await mobile.evaluate(() => document.documentElement.scrollWidth);
    await mobile.screenshot({ path: join(out, `phone-${name}.png`), fullPage: true });
    check(width <= 390, `${step}: the page is ${width} px wide on a 390 px phone`);
  }
  check(
    (await mobile.evaluate(() => getComputedStyle(document.body).backgroundColor)) === "rgb(13, 17, 23)",
    "the dark scheme was not applied",
  );
  await mobile.goto(base + `/devices/${encodeURIComponent(device)}`);
  await mobile.locator("h2", { hasText: "Objects" }).scrollIntoViewIfNeeded();
  await mobile.screenshot({ path: join(out, "phone-device-values.png") });
  step = "phone menu";
  check(!(await mobile.locator("header nav").isVisible()), "the menu is not folded on the phone");
  await mobile.click("label.nav-toggle-label");
  check(await mobile.locator("header nav a", { hasText: "Devices" }).isVisible(), "the menu does not open");
  await mobile.screenshot({ path: join(out, "phone-menu.png") });
  check(
    (await mobile.locator('header nav a[aria-current="page"]').count()) === 1,
    "the current page is not marked in the menu",
  );
  check((await mobile.locator("a.skip[href='#main']").count()) === 1 && (await mobile.locator("main#main").count()) === 1, "no skip link to the main landmark");
  await phone.close();

  step = "logout";
  await Promise.all([page.waitForURL(/\/login$/), page.click("header form[action='/logout'] button")]);
  await page.goto(base + "/");
  check(new URL(page.url()).pathname === "/login", `after logout / went to ${page.url()}`);
  await shot("logged-out");

  // The detectors themselves: an inline handler forced into the page must
  // be blocked by the CSP and reported, and must not run.
  step = "canary";
  const before = problems.length;
  await page.evaluate(() => {
    const d = document.createElement("div");
    d.innerHTML = "<img src='data:,' onerror=\"window.__xss='canary'\">";
    document.body.append(d);
  });
  await page.waitForTimeout(500);
  const caught = problems.splice(before);
  check(caught.some((p) => p.includes("CSP violation")), `the CSP canary was not reported: ${JSON.stringify(caught)}`);
  check((await page.evaluate(() => window.__xss)) === undefined, "the CSP canary ran");
} catch (e) {
  problems.push(`${step}: ${e.message}`);
  await shot(`failed-${step.replace(/[^a-z0-9]+/gi, "-")}`).catch(() => {});
} finally {
  await browser.close();
}

if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log("browser: all steps passed; screenshots in " + out);
