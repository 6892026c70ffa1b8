/**
 * Pure helpers of the workbench panel: no JupyterLab imports, so jest tests them directly.
 */

/** Languages written right to left (their primary subtag). */
const RTL_LANGUAGES = new Set(['ar', 'fa', 'he', 'ur', 'ps', 'dv', 'ckb', 'yi']);

/** A JupyterLab locale ("ar_SA", "fr-FR", "default", "en") as a BCP 47 tag for Intl and the lang attribute. */
export function bcp47(locale: string | undefined | null): string {
  if (!locale || locale === 'default') {
    return 'en';
  }
  return locale.replace('_', '-');
}

/** Whether text in `locale` runs right to left. */
export function isRtl(locale: string | undefined | null): boolean {
  return RTL_LANGUAGES.has(bcp47(locale).split('-')[0].toLowerCase());
}

/** "rtl" or "ltr", for the panel's dir attribute. */
export function direction(locale: string | undefined | null): 'rtl' | 'ltr' {
  return isRtl(locale) ? 'rtl' : 'ltr';
}

/** A number in the user's locale (Arabic digits in Arabic), at most `digits` decimals. */
export function formatNumber(value: number, locale: string, digits = 2): string {
  return new Intl.NumberFormat(bcp47(locale), { maximumFractionDigits: digits }).format(value);
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** Bytes in binary units: 2147483648 -> "2 GiB". */
export function formatBytes(bytes: number, locale = 'en'): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${formatNumber(value, locale, unit === 0 ? 0 : 1)} ${BYTE_UNITS[unit]}`;
}

/** A duration as hours and minutes (the translated unit words come from the caller): [hours, minutes]. */
export function splitDuration(seconds: number): [number, number] {
  const total = Math.max(0, Math.floor(seconds / 60));
  return [Math.floor(total / 60), total % 60];
}

/** The share of a budget used, 0..1, for the meter; a zero budget counts as spent. */
export function usedFraction(used: number, limit: number): number {
  if (limit <= 0) {
    return 1;
  }
  return Math.min(1, Math.max(0, used / limit));
}

/** A date (ISO text or epoch milliseconds) in the user's locale. */
export function formatDate(value: string | number, locale: string): string {
  const date = new Date(value);
  if (isNaN(date.getTime())) {
    return String(value);
  }
  return new Intl.DateTimeFormat(bcp47(locale), { dateStyle: 'medium', timeStyle: 'short' }).format(date);
}

/** A due date in the user's locale, with the weekday (students plan by the day of the week). */
export function formatDue(value: string, locale: string): string {
  const date = new Date(value);
  if (isNaN(date.getTime())) {
    return String(value);
  }
  return new Intl.DateTimeFormat(bcp47(locale), {
    weekday: 'short',
    day: 'numeric',
    month: 'short',
    year: 'numeric',
    hour: '2-digit',
    minute: '2-digit'
  }).format(date);
}

/** The error text of a failed API answer: its JSON {"error"} or {"message"}, else the status. */
export function errorText(status: number, body: string): string {
  try {
    const data = JSON.parse(body);
    if (data && typeof data.error === 'string') {
      return data.error;
    }
    if (data && typeof data.message === 'string') {
      return data.message;
    }
  } catch {
    // not JSON: fall through
  }
  return body.trim() ? `${status}: ${body.trim().slice(0, 200)}` : `HTTP ${status}`;
}
