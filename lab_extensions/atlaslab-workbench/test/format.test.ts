import {
  bcp47,
  direction,
  errorText,
  formatBytes,
  formatDue,
  formatNumber,
  isRtl,
  splitDuration,
  usedFraction
} from '../src/format';

describe('locale and direction', () => {
  it('maps JupyterLab locales to BCP 47 tags', () => {
    expect(bcp47('ar_SA')).toBe('ar-SA');
    expect(bcp47('fr-FR')).toBe('fr-FR');
    expect(bcp47('default')).toBe('en');
    expect(bcp47(undefined)).toBe('en');
  });

  it('lays Arabic out right to left, French and English left to right', () => {
    expect(isRtl('ar_SA')).toBe(true);
    expect(direction('ar')).toBe('rtl');
    expect(direction('fr_FR')).toBe('ltr');
    expect(direction('en')).toBe('ltr');
    expect(direction('default')).toBe('ltr');
  });
});

describe('numbers', () => {
  it('formats bytes in binary units', () => {
    expect(formatBytes(2 * 1024 ** 3)).toBe('2 GiB');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536 * 1024 ** 2)).toBe('1.5 GiB');
  });

  it('formats in the user locale', () => {
    expect(formatNumber(1.5, 'fr_FR')).toBe('1,5');
    expect(formatNumber(1234.5, 'en')).toBe('1,234.5');
  });

  it('splits durations into hours and minutes, never negative', () => {
    expect(splitDuration(3600 + 125)).toEqual([1, 2]);
    expect(splitDuration(-5)).toEqual([0, 0]);
  });

  it('counts a zero budget as spent and clamps overuse', () => {
    expect(usedFraction(1, 4)).toBe(0.25);
    expect(usedFraction(0, 0)).toBe(1);
    expect(usedFraction(9, 4)).toBe(1);
  });
});

describe('errors', () => {
  it('shows the server message, else the status', () => {
    expect(errorText(503, '{"error": "credits are not available"}')).toBe('credits are not available');
    expect(errorText(403, '{"message": "Forbidden"}')).toBe('Forbidden');
    expect(errorText(502, '')).toBe('HTTP 502');
    expect(errorText(500, '<html>boom</html>')).toBe('500: <html>boom</html>');
  });
});

describe('due dates', () => {
  // Formatted in the machine's time zone, like the browser does: compare with Intl's own answer for the parts.
  const due = '2031-06-30T21:59:00+00:00';

  it('names the weekday, day, month and year in the user language', () => {
    const fr = formatDue(due, 'fr_FR');
    const en = formatDue(due, 'en');
    const weekdayFr = new Intl.DateTimeFormat('fr-FR', { weekday: 'short' }).format(new Date(due));
    expect(fr).toContain(weekdayFr);
    expect(fr).toMatch(/juin|juil\./);
    expect(en).toMatch(/Jun|Jul/);
    expect(en).toContain('2031');
    expect(fr).not.toBe(en);
  });

  it('writes Arabic due dates with Arabic month names', () => {
    expect(formatDue(due, 'ar_SA')).not.toMatch(/Jun|Jul/);
  });

  it('gives back what is no date unchanged', () => {
    expect(formatDue('soon', 'en')).toBe('soon');
  });
});
