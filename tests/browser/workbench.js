// Drives Debian's chromium through the workbench panel in a real hub (playwright-core, no downloaded browser).
// Usage: node workbench.js '{"url", "user", "password", "chromium", "artifacts"}'
// Prints one JSON object of what it saw; exits non-zero (with the error) when a step fails.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const cfg = JSON.parse(process.argv[2]);
const seen = { steps: [] };
const PANEL = '#atlaslab-workbench';

async function main() {
  fs.mkdirSync(cfg.artifacts, { recursive: true });
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu']
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(cfg.timeout || 30000);
  const shot = async name => {
    const file = path.join(cfg.artifacts, `workbench-${name}.png`);
    await page.screenshot({ path: file });
    seen.steps.push(`screenshot ${name}`);
  };
  try {
    await page.goto(`${cfg.url}/hub/login`);
    await page.fill('input[name=username]', cfg.user);
    await page.fill('input[name=password]', cfg.password);
    await Promise.all([page.waitForNavigation(), page.click('[type=submit]')]);
    seen.steps.push('logged in');

    const lab = `${cfg.url}/user/${cfg.user}/lab`;
    const openPanel = async () => {
      await page.goto(lab);
      // The sidebar tab of the panel (a Lumino tab labelled by the panel's caption); the layout restorer may
      // open or close the sidebar after the first paint, so click until the panel stays shown.
      const tab = page.locator('.jp-SideBar [data-id="atlaslab-workbench"]');
      await tab.waitFor({ timeout: 60000 });
      await page.waitForTimeout(2000);
      for (let i = 0; i < 5 && !(await page.locator(PANEL).isVisible()); i++) {
        await tab.click();
        await page.waitForTimeout(1000);
      }
      await page.locator(`${PANEL} .jp-AtlasLabWorkbench-environment dd`).first().waitFor();
      await page.waitForFunction(
        sel => !document.querySelector(sel).textContent.includes('…'),
        `${PANEL} .jp-AtlasLabWorkbench-credits`
      );
    };
    const text = sel => page.locator(`${PANEL} ${sel}`).evaluate(n => n.innerText.trim());
    const label = sel => page.locator(`${PANEL} ${sel}`).evaluate(n => n.textContent.trim());

    await openPanel();
    seen.steps.push('panel open');
    seen.en = {
      title: await label('.jp-AtlasLabWorkbench-environment h3'),
      environment: await text('.jp-AtlasLabWorkbench-environment'),
      credits: await text('.jp-AtlasLabWorkbench-credits'),
      runs: await text('.jp-AtlasLabWorkbench-runs'),
      courses: await text('.jp-AtlasLabWorkbench-courses'),
      dir: await page.locator(PANEL).getAttribute('dir')
    };
    await shot('en');

    // Start a Dask cluster from the panel, then follow its dashboard link (through the user's server).
    await page.locator(`${PANEL} .jp-AtlasLabWorkbench-daskButton`).click();
    const link = page.locator(`${PANEL} .jp-AtlasLabWorkbench-dashboard`);
    await link.waitFor({ timeout: 90000 });
    seen.dask = { text: await text('.jp-AtlasLabWorkbench-dask'), href: await link.getAttribute('href') };
    await shot('dask');
    const [dashboard] = await Promise.all([context.waitForEvent('page'), link.click()]);
    await dashboard.waitForLoadState('domcontentloaded');
    await dashboard.waitForSelector('body');
    seen.dask.dashboard = { url: dashboard.url(), title: await dashboard.title() };
    await dashboard.screenshot({ path: path.join(cfg.artifacts, 'workbench-dask-dashboard.png') });
    await dashboard.close();
    await page.locator(`${PANEL} .jp-AtlasLabWorkbench-daskButton`).click();
    await page.waitForFunction(sel => !document.querySelector(sel), `${PANEL} .jp-AtlasLabWorkbench-dashboard`, {
      timeout: 60000
    });
    seen.steps.push('dask stopped');

    // JupyterLab's language setting, as the Settings > Language menu sets it, then a reload.
    const setLocale = async locale => {
      const status = await page.evaluate(
        async ([base, locale]) => {
          const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
          const r = await fetch(`${base}/lab/api/settings/@jupyterlab/translation-extension:plugin`, {
            method: 'PUT',
            headers: { 'Content-Type': 'application/json', 'X-XSRFToken': decodeURIComponent(xsrf) },
            body: JSON.stringify({ raw: JSON.stringify({ locale }) })
          });
          return r.status;
        },
        [`/user/${cfg.user}`, locale]
      );
      if (status !== 204 && status !== 200) {
        throw new Error(`setting the language to ${locale} answered ${status}`);
      }
    };
    for (const [locale, key] of [
      ['fr_FR', 'fr'],
      ['ar_SA', 'ar']
    ]) {
      await setLocale(locale);
      await openPanel();
      seen[key] = {
        title: await label('.jp-AtlasLabWorkbench-environment h3'),
        dask: await text('.jp-AtlasLabWorkbench-daskButton'),
        dir: await page.locator(PANEL).getAttribute('dir'),
        lang: await page.locator(PANEL).getAttribute('lang'),
        direction: await page.locator(PANEL).evaluate(n => getComputedStyle(n).direction),
        // In RTL the section heading starts at the panel's right edge.
        headingRightGap: await page.locator(`${PANEL} .jp-AtlasLabWorkbench-environment h3`).evaluate(h => {
          const panel = h.closest('.jp-AtlasLabWorkbench').getBoundingClientRect();
          const range = document.createRange();
          range.selectNodeContents(h);
          const text = range.getBoundingClientRect();
          return { left: Math.round(text.left - panel.left), right: Math.round(panel.right - text.right) };
        })
      };
      await shot(key);
    }
    await setLocale('default');
  } catch (e) {
    seen.error = String(e && e.stack ? e.stack : e);
    await shot('failure').catch(() => {});
  } finally {
    await browser.close();
  }
  fs.writeFileSync(path.join(cfg.artifacts, 'workbench-seen.json'), JSON.stringify(seen, null, 2));
  process.stdout.write(JSON.stringify(seen));
  process.exit(seen.error ? 1 : 0);
}

main();
