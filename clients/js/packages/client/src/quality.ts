/** Connection quality from round-trip latency. */
export type ConnectionQuality = 'excellent' | 'good' | 'fair' | 'poor';

/**
 * Upper bounds (exclusive), in milliseconds, of each grade. Defaults: excellent < 50 ms,
 * good < 150 ms, fair < 400 ms, poor otherwise.
 */
export interface QualityThresholds {
  excellent: number;
  good: number;
  fair: number;
}

export const DEFAULT_QUALITY_THRESHOLDS: QualityThresholds = { excellent: 50, good: 150, fair: 400 };

export function gradeLatency(ms: number, t: QualityThresholds = DEFAULT_QUALITY_THRESHOLDS): ConnectionQuality {
  if (ms < t.excellent) return 'excellent';
  if (ms < t.good) return 'good';
  if (ms < t.fair) return 'fair';
  return 'poor';
}
