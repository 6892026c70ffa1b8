import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { errorText } from './format';

/** One source's answer: its data, or the error to show in its place. */
export type Result<T> = { ok: true; data: T } | { ok: false; error: string };

export interface IGpu {
  uuid: string;
  name?: string;
  utilization?: number;
  memory_used?: number;
  memory_total?: number;
  error?: string;
}

export interface IEnvironment {
  environment: string | null;
  cpu_limit: number | null;
  mem_limit: number | null;
  gpus: IGpu[];
}

export interface IBudget {
  scope: string;
  name: string;
  kind: 'gpu' | 'cpu';
  limit: number;
  used: number;
  remaining: number;
  period: string;
  renews: string | null;
}

export interface INotice {
  level: string;
  message: string;
  at?: string;
}

export interface ICredits {
  budgets: IBudget[];
  notices: INotice[];
  gpus: string[];
}

export interface IIdle {
  idle_cull_after: number | null;
  last_activity: string | null;
  left: number | null;
}

export interface IRun {
  run_id: string;
  name: string;
  experiment_id: string;
  status: string;
  start_time: number;
  metrics: Record<string, number>;
  link: string;
}

export interface IDask {
  running: boolean;
  dashboard?: string;
  workers?: number;
}

/** An assignment released through the exchange, with its due date (ISO 8601, UTC). */
export interface IDue {
  name: string;
  due: string;
  submitted: boolean;
}

export interface ICourse {
  id: string;
  roles: string[];
  /** The next due dates, soonest first. */
  due: IDue[];
  /** Past due and not submitted (students only), latest first. */
  overdue: IDue[];
}

/** The courses always come from the hub; `error` says why due dates are missing (the exchange did not answer). */
export interface ICourses {
  courses: ICourse[];
  error?: string;
}

/** Calls the workbench API of this server (atlaslab/workbench); never throws: errors come back as results. */
export async function request<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<Result<T>> {
  const url = URLExt.join(settings.baseUrl, 'atlaslab', 'api', 'workbench', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (e) {
    return { ok: false, error: e instanceof Error ? e.message : String(e) };
  }
  const body = await response.text();
  if (!response.ok) {
    return { ok: false, error: errorText(response.status, body) };
  }
  try {
    return { ok: true, data: JSON.parse(body) as T };
  } catch {
    return { ok: false, error: errorText(response.status, body) };
  }
}
