import { ServerConnection } from '@jupyterlab/services';
import { ITranslator, TranslationBundle } from '@jupyterlab/translation';
import type { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { ICourses, ICredits, IDask, IDue, IEnvironment, IIdle, IRun, Result, request } from './api';
import {
  bcp47,
  direction,
  formatBytes,
  formatDate,
  formatDue,
  formatNumber,
  splitDuration,
  usedFraction
} from './format';

/** The translation domain of the panel's strings (atlaslab/workbench/locale/*\/LC_MESSAGES). */
export const DOMAIN = 'atlaslab_workbench';

/** The attribute naming a control across re-renders, so keyboard focus stays on it when its section is redrawn. */
const FOCUS_KEY = 'data-focus-key';

/** How often the panel refreshes while visible (live GPU use, time before cull). */
const REFRESH_MS = 15000;

type Section = 'environment' | 'credits' | 'runs' | 'dask' | 'courses';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') {
      node.className = value;
    } else {
      node.setAttribute(key, value);
    }
  }
  for (const child of children) {
    node.append(child);
  }
  return node;
}

/**
 * The workbench sidebar: environment and GPUs, credits and time before the idle cull, latest MLflow runs,
 * the Dask cluster, courses. Each section shows its own data or its own error.
 */
export class WorkbenchPanel extends Widget {
  readonly trans: TranslationBundle;
  readonly locale: string;
  private bodies = new Map<Section, HTMLElement>();
  private daskButton: HTMLButtonElement;
  private dask: IDask = { running: false };
  private daskBusy = false;
  private timer: number | undefined;

  constructor(
    translator: ITranslator,
    private settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {
    super();
    this.trans = translator.load(DOMAIN);
    this.locale = bcp47(translator.languageCode);
    const trans = this.trans;
    this.id = 'atlaslab-workbench';
    this.addClass('jp-AtlasLabWorkbench');
    this.title.caption = trans.__('AtlasLab workbench');
    this.node.setAttribute('dir', direction(this.locale));
    this.node.setAttribute('lang', this.locale);
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', trans.__('AtlasLab workbench'));
    // Focusable by script only: opening the panel from the command palette moves the keyboard into it.
    this.node.tabIndex = -1;

    const refresh = el('button', {
      class: 'jp-AtlasLabWorkbench-refresh jp-mod-styled',
      type: 'button',
      [FOCUS_KEY]: 'refresh'
    });
    refresh.textContent = trans.__('Refresh');
    refresh.addEventListener('click', () => void this.refresh());
    const header = el('div', { class: 'jp-AtlasLabWorkbench-header' }, el('h2', {}, trans.__('Workbench')), refresh);
    this.node.append(header);

    this.daskButton = el('button', {
      class: 'jp-AtlasLabWorkbench-daskButton jp-mod-styled jp-mod-accept',
      type: 'button',
      [FOCUS_KEY]: 'dask'
    });
    this.daskButton.addEventListener('click', () => void this.toggleDask());

    const titles: [Section, string][] = [
      ['environment', trans.__('Environment')],
      ['credits', trans.__('Credits')],
      ['runs', trans.__('Latest experiments')],
      ['dask', trans.__('Dask cluster')],
      ['courses', trans.__('Courses')]
    ];
    for (const [key, title] of titles) {
      const headingId = `atlaslab-workbench-${key}-title`;
      const body = el('div', { class: 'jp-AtlasLabWorkbench-body', 'aria-live': 'polite' });
      body.textContent = trans.__('Loading…');
      const section = el(
        'section',
        { class: `jp-AtlasLabWorkbench-section jp-AtlasLabWorkbench-${key}`, 'aria-labelledby': headingId },
        el('h3', { id: headingId }, title),
        body
      );
      this.bodies.set(key, body);
      this.node.append(section);
    }
  }

  /** Activated (its sidebar tab, the command palette): the keyboard follows, unless focus is already inside. */
  protected onActivateRequest(msg: Message): void {
    super.onActivateRequest(msg);
    this.focusIn();
  }

  /** Moves the keyboard focus to the panel (Tab then reaches its controls in order). */
  focusIn(): void {
    if (this.isAttached && this.isVisible && !this.node.contains(document.activeElement)) {
      this.node.focus();
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
    if (this.timer === undefined) {
      this.timer = window.setInterval(() => {
        if (this.isVisible) {
          void this.refresh();
        }
      }, REFRESH_MS);
    }
  }

  protected onAfterHide(): void {
    window.clearInterval(this.timer);
    this.timer = undefined;
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  /** Reads every source at once; each section shows its answer or its error. */
  async refresh(): Promise<void> {
    const s = this.settings;
    const [env, credits, idle, runs, dask, courses] = await Promise.all([
      request<IEnvironment>('environment', {}, s),
      request<ICredits>('credits', {}, s),
      request<IIdle>('idle', {}, s),
      request<{ runs: IRun[] }>('runs', {}, s),
      request<IDask>('dask', {}, s),
      request<ICourses>('courses', {}, s)
    ]);
    this.fill('environment', env, data => this.renderEnvironment(data));
    this.fill('credits', credits, data => this.renderCredits(data, idle));
    this.fill('runs', runs, data => this.renderRuns(data.runs));
    if (!this.daskBusy) {
      // A start or stop in flight answers for itself (toggleDask); this refresh would show the state before it.
      this.fill('dask', dask, data => this.renderDask(data));
    }
    this.fill('courses', courses, data => this.renderCourses(data));
  }

  private fill<T>(section: Section, result: Result<T>, render: (data: T) => Node[]): void {
    const body = this.bodies.get(section)!;
    // Redrawing a section would drop the keyboard focus of whoever is on one of its controls (every refresh):
    // put it back on the control with the same key.
    const active = document.activeElement;
    const key = active && body.contains(active) ? active.getAttribute(FOCUS_KEY) : null;
    if (result.ok) {
      body.replaceChildren(...render(result.data));
    } else {
      body.replaceChildren(this.error(result.error));
    }
    if (key !== null) {
      const again = Array.from(body.querySelectorAll<HTMLElement>(`[${FOCUS_KEY}]`)).find(
        n => n.getAttribute(FOCUS_KEY) === key
      );
      again?.focus();
    }
  }

  private error(message: string): HTMLElement {
    return el('p', { class: 'jp-AtlasLabWorkbench-error', role: 'alert' }, message);
  }

  private row(label: string, value: string | Node): HTMLElement {
    return el('div', { class: 'jp-AtlasLabWorkbench-row' }, el('dt', {}, label), el('dd', {}, value));
  }

  private renderEnvironment(data: IEnvironment): Node[] {
    const trans = this.trans;
    const loc = this.locale;
    const list = el('dl', { class: 'jp-AtlasLabWorkbench-facts' });
    list.append(this.row(trans.__('Profile'), data.environment ?? trans.__('unknown')));
    list.append(
      this.row(
        trans.__('CPU'),
        data.cpu_limit === null ? trans.__('no limit') : trans._n('%1 core', '%1 cores', data.cpu_limit, formatNumber(data.cpu_limit, loc))
      )
    );
    list.append(
      this.row(trans.__('Memory'), data.mem_limit === null ? trans.__('no limit') : formatBytes(data.mem_limit, loc))
    );
    const out: Node[] = [list];
    if (data.gpus.length === 0) {
      out.push(el('p', { class: 'jp-AtlasLabWorkbench-note' }, trans.__('No GPU assigned to this server.')));
      return out;
    }
    const gpus = el('ul', { class: 'jp-AtlasLabWorkbench-gpus', 'aria-label': trans.__('GPUs') });
    for (const gpu of data.gpus) {
      const item = el('li', { class: 'jp-AtlasLabWorkbench-gpu' }, el('code', { dir: 'ltr' }, gpu.uuid));
      if (gpu.error) {
        item.append(el('span', { class: 'jp-AtlasLabWorkbench-error' }, trans.__('No live data: %1', gpu.error)));
      } else {
        item.append(
          el(
            'span',
            {},
            trans.__(
              '%1: %2% busy, %3 of %4 memory',
              gpu.name ?? 'GPU',
              formatNumber(gpu.utilization ?? 0, loc, 0),
              formatBytes(gpu.memory_used ?? 0, loc),
              formatBytes(gpu.memory_total ?? 0, loc)
            )
          )
        );
      }
      gpus.append(item);
    }
    out.push(gpus);
    return out;
  }

  private renderCredits(data: ICredits, idle: Result<IIdle>): Node[] {
    const trans = this.trans;
    const loc = this.locale;
    const out: Node[] = [];
    if (data.budgets.length === 0) {
      out.push(el('p', { class: 'jp-AtlasLabWorkbench-note' }, trans.__('No budget applies to you.')));
    }
    const list = el('ul', { class: 'jp-AtlasLabWorkbench-budgets' });
    for (const b of data.budgets) {
      const unit = b.kind === 'gpu' ? trans.__('GPU-hours') : trans.__('CPU-hours');
      const who = b.scope === 'user' ? trans.__('Your budget') : trans.__('Budget of %1 %2', b.scope, b.name);
      const meter = el('meter', {
        min: '0',
        max: '1',
        value: String(1 - usedFraction(b.used, b.limit)),
        'aria-label': trans.__('%1 left', unit)
      });
      const text = trans.__(
        '%1: %2 of %3 %4 left',
        who,
        formatNumber(b.remaining, loc),
        formatNumber(b.limit, loc),
        unit
      );
      const item = el('li', { class: 'jp-AtlasLabWorkbench-budget' }, el('span', {}, text), meter);
      if (b.renews) {
        item.append(el('small', {}, trans.__('Renews on %1', formatDate(b.renews, loc))));
      }
      list.append(item);
    }
    if (data.budgets.length) {
      out.push(list);
    }
    for (const n of data.notices) {
      out.push(el('p', { class: `jp-AtlasLabWorkbench-notice jp-mod-${n.level}`, role: 'status' }, n.message));
    }
    if (!idle.ok) {
      out.push(this.error(idle.error));
    } else if (idle.data.left === null) {
      out.push(el('p', { class: 'jp-AtlasLabWorkbench-idle' }, trans.__('This server is not stopped when idle.')));
    } else {
      const [h, m] = splitDuration(idle.data.left);
      out.push(
        el(
          'p',
          { class: 'jp-AtlasLabWorkbench-idle' },
          trans.__('Stopped when idle in %1 h %2 min', formatNumber(h, loc, 0), formatNumber(m, loc, 0))
        )
      );
    }
    return out;
  }

  private renderRuns(runs: IRun[]): Node[] {
    const trans = this.trans;
    const loc = this.locale;
    if (runs.length === 0) {
      return [el('p', { class: 'jp-AtlasLabWorkbench-note' }, trans.__('No runs yet.'))];
    }
    const list = el('ul', { class: 'jp-AtlasLabWorkbench-runs' });
    for (const run of runs) {
      const link = el(
        'a',
        { href: run.link, target: '_blank', rel: 'noopener', [FOCUS_KEY]: `run-${run.run_id}` },
        run.name || run.run_id
      );
      link.setAttribute('aria-label', trans.__('Open run %1 in MLflow', run.name || run.run_id));
      const metrics = Object.entries(run.metrics)
        .slice(0, 3)
        .map(([k, v]) => `${k} = ${formatNumber(v, loc, 4)}`)
        .join(', ');
      list.append(
        el(
          'li',
          { class: 'jp-AtlasLabWorkbench-run' },
          link,
          el('small', {}, `${run.status} · ${formatDate(run.start_time, loc)}`),
          el('span', { dir: 'ltr' }, metrics)
        )
      );
    }
    return [list];
  }

  private renderDask(data: IDask): Node[] {
    const trans = this.trans;
    this.dask = data;
    this.daskButton.removeAttribute('aria-disabled');
    this.daskButton.removeAttribute('aria-busy');
    this.daskButton.textContent = data.running ? trans.__('Stop the Dask cluster') : trans.__('Start a Dask cluster');
    const out: Node[] = [this.daskButton];
    if (data.running) {
      out.push(
        el(
          'p',
          {},
          trans._n('%1 worker', '%1 workers', data.workers ?? 0, formatNumber(data.workers ?? 0, this.locale, 0))
        )
      );
      if (data.dashboard) {
        out.push(
          el(
            'a',
            {
              class: 'jp-AtlasLabWorkbench-dashboard',
              href: data.dashboard,
              target: '_blank',
              rel: 'noopener',
              [FOCUS_KEY]: 'dashboard'
            },
            trans.__('Dask dashboard')
          )
        );
      }
    } else {
      out.push(el('p', { class: 'jp-AtlasLabWorkbench-note' }, trans.__('No cluster running.')));
    }
    return out;
  }

  private renderCourses(data: ICourses): Node[] {
    const trans = this.trans;
    const courses = data.courses;
    const out: Node[] = [];
    if (courses.length === 0) {
      out.push(el('p', { class: 'jp-AtlasLabWorkbench-note' }, trans.__('You are in no course.')));
    }
    const list = el('ul', { class: 'jp-AtlasLabWorkbench-courseList' });
    for (const course of courses) {
      const roles = course.roles.map(r => this.roleName(r)).join(', ');
      const item = el('li', { class: 'jp-AtlasLabWorkbench-course' }, el('span', {}, el('strong', { dir: 'ltr' }, course.id), ` (${roles})`));
      if (course.due.length) {
        const due = el('ul', {
          class: 'jp-AtlasLabWorkbench-due',
          'aria-label': trans.__('Next due dates in %1', course.id)
        });
        for (const d of course.due) {
          due.append(this.dueItem(d, trans.__('%1 due %2', d.name, formatDue(d.due, this.locale))));
        }
        item.append(due);
      } else if (!data.error) {
        item.append(el('small', { class: 'jp-AtlasLabWorkbench-note' }, trans.__('No upcoming due date.')));
      }
      if (course.overdue.length) {
        const late = el('ul', {
          class: 'jp-AtlasLabWorkbench-overdue',
          'aria-label': trans.__('Missed due dates in %1', course.id)
        });
        for (const d of course.overdue) {
          late.append(
            this.dueItem(d, trans.__('%1 was due %2 and is not submitted', d.name, formatDue(d.due, this.locale)))
          );
        }
        item.append(late);
      }
      list.append(item);
    }
    if (courses.length) {
      out.push(list);
    }
    if (data.error) {
      out.push(this.error(trans.__('Due dates are unavailable: %1', data.error)));
    }
    return out;
  }

  private dueItem(d: IDue, text: string): HTMLElement {
    // The machine-readable date for assistive technology, the formatted one for reading.
    return el('li', { class: 'jp-AtlasLabWorkbench-dueItem' }, el('time', { datetime: d.due }, text));
  }

  private roleName(role: string): string {
    const trans = this.trans;
    switch (role) {
      case 'students':
        return trans.__('student');
      case 'instructors':
        return trans.__('instructor');
      case 'tas':
        return trans.__('teaching assistant');
      case 'graders':
        return trans.__('grader');
      default:
        return role;
    }
  }

  private async toggleDask(): Promise<void> {
    // Busy, not disabled: a disabled button would throw the keyboard focus out of the panel.
    if (this.daskBusy) {
      return;
    }
    this.daskBusy = true;
    const action = this.dask.running ? 'stop' : 'start';
    this.daskButton.setAttribute('aria-disabled', 'true');
    this.daskButton.setAttribute('aria-busy', 'true');
    this.daskButton.textContent = action === 'start' ? this.trans.__('Starting…') : this.trans.__('Stopping…');
    const result = await request<IDask>('dask', { method: 'POST', body: JSON.stringify({ action }) }, this.settings);
    this.daskBusy = false;
    if (result.ok) {
      this.fill('dask', result, data => this.renderDask(data));
    } else {
      this.fill('dask', { ok: true, data: this.dask }, data => this.renderDask(data));
      this.bodies.get('dask')!.append(this.error(result.error));
    }
  }
}
