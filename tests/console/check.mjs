// The web console in headless Chromium (playwright-core with the machine's /usr/bin/chromium): start a run
// from the form, watch its progress move, open its report, start a second, compare the two. Run by
// tests/console.rs against a running service.
//
// Usage: node tests/console/check.mjs BASE_URL TOKEN SCREENSHOT.png
import { chromium } from "playwright-core";

const [base, token, screenshot] = process.argv.slice(2);
const suffix = Date.now().toString(36);
const [a, b] = [`console-a-${suffix}`, `console-b-${suffix}`];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const fail = async (page, what) => {
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failed.png"), fullPage: true });
  console.error(`FAIL ${what}`);
  await browser.close();
  process.exit(1);
};
const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
const outside = [];
page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("data:") && r.url() !== "about:srcdoc") outside.push(r.url()); });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));

await page.goto(`${base}/console`);
await page.fill("#token", token);
await page.press("#token", "Tab");
await page.waitForSelector("#runs tr", { timeout: 10000 });
console.log("ok   the console loads and lists the runs with the token");

async function start(runId, rate, duration) {
  await page.fill("#run_id", runId);
  await page.fill("#rate", String(rate));
  await page.fill("#duration", duration);
  await page.fill("#gates", "lost == 0\np99(DELIVERY) < 30s");
  await page.fill("#extra", JSON.stringify({ ack_timeout: "20s", linger: "0s" }));
  await page.click("#start-button");
  await page.waitForFunction((id) => document.querySelector("#start-message").textContent === "started " + id, runId, { timeout: 15000 })
    .catch(() => fail(page, `starting ${runId}: ${errors.join("; ")}`));
}

// A run from the form; its progress moves while it runs.
await start(a, 200, "5s");
console.log(`ok   run ${a} started from the form`);
const sentNow = async () => Number((await page.textContent("#f-sent")).replace(/,/g, "")) || 0;
await page.waitForFunction(() => Number(document.querySelector("#f-sent").textContent.replace(/,/g, "")) > 0, null, { timeout: 15000 });
const first = await sentNow();
await page.waitForFunction((n) => Number(document.querySelector("#f-sent").textContent.replace(/,/g, "")) > n, first, { timeout: 15000 })
  .catch(() => fail(page, "the progress did not move"));
const second = await sentNow();
await page.waitForFunction(() => document.querySelector("#detail-state").textContent !== "running"
    || [...document.querySelectorAll("#statuses tbody tr.live")].some((tr) => tr.children[1].textContent === "DELIVERY"), null, { timeout: 15000 })
  .catch(() => fail(page, "no live percentiles while the run runs"));
const livePercentiles = await page.locator("#statuses tbody tr.live").count();
if (livePercentiles === 0) await fail(page, "the run ended before its live percentiles showed");
const points = await page.locator("#chart polyline").count();
if (points !== 2) await fail(page, `the throughput chart has ${points} lines, not 2 (sent and target)`);
console.log(`ok   progress moves: ${first} then ${second} sent; throughput against target drawn; live p50 and p99 of ${livePercentiles} statuses`);
await page.waitForFunction(() => document.querySelector("#detail-state").textContent === "passed", null, { timeout: 60000 })
  .catch(async () => fail(page, `run ${a} did not pass: ${await page.textContent("#detail-state")} ${await page.textContent("#detail-error")}`));
const rows = await page.locator("#statuses tbody tr").count();
const lost = await page.textContent("#f-lost");
if (rows < 3 || lost !== "0") await fail(page, `the finished run shows ${rows} status rows and ${lost} lost`);
console.log(`ok   run ${a} passed: ${await page.textContent("#f-sent")} sent, ${rows} statuses with percentiles, 0 lost, gates ${await page.textContent("#gates-out")}`);
await page.screenshot({ path: screenshot, fullPage: true });

// Its report, in the page.
await page.click("#report-button");
const report = page.frameLocator("#report");
await report.locator("body").getByText(a).first().waitFor({ timeout: 15000 }).catch(() => fail(page, "the report does not name the run"));
console.log("ok   its HTML report opens in the console");

// A second run, and the two compared.
await start(b, 200, "3s");
await page.waitForFunction(() => document.querySelector("#detail-state").textContent === "passed", null, { timeout: 60000 })
  .catch(() => fail(page, `run ${b} did not pass`));
await page.waitForFunction(([x, y]) => [...document.querySelectorAll("#compare-b option")].map((o) => o.value).filter((v) => v === x || v === y).length === 2, [a, b], { timeout: 15000 })
  .catch(() => fail(page, "the runs are not offered for comparison"));
await page.selectOption("#compare-a", a);
await page.selectOption("#compare-b", b);
const comparing = Date.now();
await page.click("#compare-button");
await page.waitForFunction(([x, y]) => { const t = document.querySelector("#compare-text").textContent; return t.includes(x) && t.includes(y); }, [a, b], { timeout: 60000 })
  .catch(async () => fail(page, `the comparison does not show; the console says: ${JSON.stringify(await page.textContent("#compare-verdict"))}`));
console.log(`ok   ${b} compared with ${a} in ${Date.now() - comparing} ms: ${await page.textContent("#compare-verdict")}`);

if (outside.length) await fail(page, `requests outside the service: ${outside.join(", ")}`);
if (errors.length) await fail(page, `script errors: ${errors.join("; ")}`);
console.log("ok   nothing fetched from elsewhere, no script errors");
await browser.close();
