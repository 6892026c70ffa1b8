// Drives Debian's chromium through the workbench panel in a real hub (playwright-core, no downloaded browser).
// Usage: node workbench.js '{"url", "user", "userFr", "password", "chromium", "artifacts"}'
// user: a student of a course with released assignments, in a tenant without a language (the site's first);
// userFr: in a tenant whose language is French, never having chosen a language.
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
  let page = await context.newPage();
  page.setDefaultTimeout(cfg.timeout || 30000);
  const shot = async name => {
    const file = path.join(cfg.artifacts, `workbench-${name}.png`);
    await page.screenshot({ path: file });
    seen.steps.push(`screenshot ${name}`);
  };
  const login = async user => {
    await page.goto(`${cfg.url}/hub/login`);
    await page.fill('input[name=username]', user);
    await page.fill('input[name=password]', cfg.password);
    await Promise.all([page.waitForNavigation(), page.click('[type=submit]')]);
    seen.steps.push(`logged in as ${user}`);
  };
  // JupyterLab's language setting as the user's server answers it: the value in force and the user's own choice.
  const readLocale = user =>
    page.evaluate(async base => {
      // Cookie-authenticated API calls need the XSRF token, reads included (JupyterHub's single-user auth).
      const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
      const r = await fetch(`${base}/lab/api/settings/@jupyterlab/translation-extension:plugin`, {
        headers: { 'X-XSRFToken': decodeURIComponent(xsrf) }
      });
      const data = await r.json();
      // The server applies overrides.json to the schema's defaults; the user's own settings come on top.
      const user = (data.settings && data.settings.locale) || null;
      return { composite: user || data.schema.properties.locale.default, user };
    }, `/user/${user}`);
  try {
    await login(cfg.user);

    let lab = `${cfg.url}/user/${cfg.user}/lab`;
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
    const dueTimes = () =>
      page
        .locator(`${PANEL} .jp-AtlasLabWorkbench-due time`)
        .evaluateAll(nodes => nodes.map(n => n.getAttribute('datetime')));
    const menu = () => page.locator('#jp-MainMenu .lm-MenuBar-itemLabel').first().evaluate(n => n.textContent.trim());

    await openPanel();
    seen.steps.push('panel open');
    seen.siteDefault = await readLocale(cfg.user);
    seen.en = {
      title: await label('.jp-AtlasLabWorkbench-environment h3'),
      environment: await text('.jp-AtlasLabWorkbench-environment'),
      credits: await text('.jp-AtlasLabWorkbench-credits'),
      runs: await text('.jp-AtlasLabWorkbench-runs'),
      courses: await text('.jp-AtlasLabWorkbench-courses'),
      dueTimes: await dueTimes(),
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

    // The same with the keyboard alone: open the panel from the command palette, Tab through it, start and stop
    // the Dask cluster with Enter and Space.
    await page.goto(lab);
    await page.locator('.jp-SideBar [data-id="atlaslab-workbench"]').waitFor({ timeout: 60000 });
    await page.waitForTimeout(2000);
    await page.keyboard.press('Control+Shift+C');
    await page.locator('.lm-CommandPalette-input:visible').waitFor();
    await page.keyboard.type('Open the AtlasLab workbench');
    await page.keyboard.press('Enter');
    await page.locator(`${PANEL} .jp-AtlasLabWorkbench-daskButton`).waitFor();
    await page.waitForTimeout(500);
    const focused = () =>
      page.evaluate(sel => {
        const a = document.activeElement;
        const panel = document.querySelector(sel);
        if (!a || !panel || !panel.contains(a)) {
          return { where: 'outside', tag: a ? a.tagName : null, id: a ? a.id : null, class: a ? String(a.className) : null };
        }
        if (a === panel) {
          return { where: 'panel' };
        }
        const labelledBy = (a.getAttribute('aria-labelledby') || '')
          .split(/\s+/)
          .map(id => document.getElementById(id))
          .filter(n => n)
          .map(n => n.textContent)
          .join(' ');
        const name = (a.getAttribute('aria-label') || labelledBy || a.textContent || a.getAttribute('title') || '').trim();
        const style = getComputedStyle(a);
        const ring =
          (style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0) || style.boxShadow !== 'none';
        return {
          where: 'control',
          key: a.getAttribute('data-focus-key') || `${a.tagName}.${a.className}`,
          name,
          focusVisible: a.matches(':focus-visible') && ring,
          text: a.textContent.trim()
        };
      }, PANEL);
    const afterOpen = await focused();
    const kb = { controls: [], afterOpen, focusInPanelAfterOpen: afterOpen.where !== 'outside' };
    seen.keyboard = kb;
    const record = f => {
      if (f.where === 'control' && !kb.controls.some(c => c.key === f.key)) {
        kb.controls.push({ key: f.key, name: f.name, focusVisible: f.focusVisible });
      }
    };
    let f = await focused();
    for (let i = 0; i < 20 && f.key !== 'dask'; i++) {
      await page.keyboard.press('Tab');
      f = await focused();
      record(f);
    }
    if (f.key !== 'dask') {
      throw new Error(`Tab never reached the Dask button (last: ${JSON.stringify(f)})`);
    }
    await page.keyboard.press('Enter');
    await page.locator(`${PANEL} .jp-AtlasLabWorkbench-dashboard`).waitFor({ timeout: 90000 });
    f = await focused();
    kb.started = { text: f.text || '', focusOnButton: f.key === 'dask' };
    await page.keyboard.press('Tab');
    f = await focused();
    record(f);
    kb.started.dashboardReached = f.key === 'dashboard';
    await shot('keyboard');
    for (let i = 0; i < 20 && f.where !== 'outside'; i++) {
      await page.keyboard.press('Tab');
      f = await focused();
      record(f);
    }
    // Every control of the panel, as the page has them: each must have been reached.
    const all = await page.locator(PANEL).evaluate(panel =>
      Array.from(
        panel.querySelectorAll('button, a[href], input, select, textarea, [tabindex]:not([tabindex="-1"])')
      )
        .filter(n => n.offsetParent !== null)
        .map(n => n.getAttribute('data-focus-key') || `${n.tagName}.${n.className}`)
    );
    kb.unreached = all.filter(key => !kb.controls.some(c => c.key === key));
    for (let i = 0; i < 20 && f.key !== 'dask'; i++) {
      await page.keyboard.press('Shift+Tab');
      f = await focused();
    }
    await page.keyboard.press('Space');
    await page.waitForFunction(sel => !document.querySelector(sel), `${PANEL} .jp-AtlasLabWorkbench-dashboard`, {
      timeout: 60000
    });
    f = await focused();
    kb.stopped = { text: f.text || '', focusOnButton: f.key === 'dask' };
    seen.steps.push('keyboard done');

    // JupyterLab's language setting, as the Settings > Language menu sets it, then a reload.
    const setLocale = async (user, locale) => {
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
        [`/user/${user}`, locale]
      );
      if (status !== 204 && status !== 200) {
        throw new Error(`setting the language of ${user} to ${locale} answered ${status}`);
      }
    };
    for (const [locale, key] of [
      ['fr_FR', 'fr'],
      ['ar_SA', 'ar']
    ]) {
      await setLocale(cfg.user, locale);
      await openPanel();
      seen[key] = {
        title: await label('.jp-AtlasLabWorkbench-environment h3'),
        courses: await text('.jp-AtlasLabWorkbench-courses'),
        dueTimes: await dueTimes(),
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
    await setLocale(cfg.user, 'default');

    // A user of a French-speaking tenant who never chose a language: French, from the setting's default.
    await context.clearCookies();
    page = await context.newPage();
    page.setDefaultTimeout(cfg.timeout || 30000);
    await login(cfg.userFr);
    lab = `${cfg.url}/user/${cfg.userFr}/lab`;
    const tenantFr = {};
    seen.tenantFr = tenantFr;
    await openPanel();
    tenantFr.default = {
      title: await label('.jp-AtlasLabWorkbench-environment h3'),
      menu: await menu(),
      setting: await readLocale(cfg.userFr)
    };
    await shot('tenant-fr');
    // Their own choice in Settings > Language wins over the tenant's default.
    await setLocale(cfg.userFr, 'en');
    await openPanel();
    tenantFr.chosen = {
      title: await label('.jp-AtlasLabWorkbench-environment h3'),
      menu: await menu(),
      setting: await readLocale(cfg.userFr)
    };
    await shot('tenant-fr-chose-en');
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
