// Opens the page of a running `yolo-cli serve` in Debian's headless Chromium, uploads an
// image through the file picker, waits for the boxes, reads the drawn detections back
// from the page, moves the confidence slider, and saves screenshots.
//
// usage: node page_test.mjs BASE_URL IMAGE OUT_DIR
// Prints one JSON object on stdout: {"detections": [...], "after_slider": [...],
// "slider": 0.3, "counts": [...], "detect_requests": N, "canvas": [w, h],
// "drawn_pixels": N, "elsewhere": [urls fetched from another origin]}.
import { chromium } from "playwright-core";
import path from "node:path";

const [base, image, outDir] = process.argv.slice(2);
if (!base || !image || !outDir) {
  console.error("usage: node page_test.mjs BASE_URL IMAGE OUT_DIR");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  let detectRequests = 0;
  const elsewhere = [];
  page.on("request", (req) => {
    if (req.url().includes("/v1/detect")) detectRequests += 1;
    if (!req.url().startsWith(base) && !req.url().startsWith("blob:") && !req.url().startsWith("data:")) {
      elsewhere.push(req.url());
    }
  });
  await page.goto(base + "/");
  await page.waitForFunction(() => !document.getElementById("model").textContent.startsWith("loading"));
  await page.setInputFiles("#file", image);
  await page.waitForSelector("body[data-state=done]", { timeout: 60000 });
  const read = () => page.$$eval("#detections tr.detection", (rows) => rows.map((r) => ({
    x1: +r.dataset.x1, y1: +r.dataset.y1, x2: +r.dataset.x2, y2: +r.dataset.y2,
    score: +r.dataset.score, class_id: +r.dataset.class_id, class_name: r.dataset.class_name,
  })));
  const detections = await read();
  await page.screenshot({ path: path.join(outDir, "page.png"), fullPage: true });
  // What is on the canvas: pixels that differ from the image alone are the drawn boxes.
  const canvas = await page.$eval("#canvas", (c) => [c.width, c.height]);
  const drawnPixels = await page.evaluate(() => {
    const c = document.getElementById("canvas");
    const plain = document.createElement("canvas");
    plain.width = c.width;
    plain.height = c.height;
    const p = plain.getContext("2d");
    p.drawImage(state.image, 0, 0);
    const a = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    const b = p.getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < a.length; i += 4) {
      if (a[i] !== b[i] || a[i + 1] !== b[i + 1] || a[i + 2] !== b[i + 2]) n += 1;
    }
    return n;
  });
  const slider = 0.3;
  await page.$eval("#conf", (el, v) => {
    el.value = String(v);
    el.dispatchEvent(new Event("input", { bubbles: true }));
  }, slider);
  const afterSlider = await read();
  const counts = await page.$$eval("#counts tr", (rows) => rows.map((r) => r.textContent));
  await page.screenshot({ path: path.join(outDir, "page-slider.png"), fullPage: true });
  console.log(JSON.stringify({
    detections, after_slider: afterSlider, slider, counts,
    detect_requests: detectRequests, canvas, drawn_pixels: drawnPixels, elsewhere,
  }));
} finally {
  await browser.close();
}
