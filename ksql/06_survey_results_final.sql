-- Final results (talk, slide 50): the same histogram per survey, once per
-- tumbling window, when the window closes (stream time past its end + grace).
-- The window is set by these variables; a demo overrides them to use minutes
-- instead of days (`survey-kit ksql apply` / `pipeline.read_pipeline(dir,
-- {...})` rewrite these DEFINEs). They are defined here, in the file that uses
-- them, because ksqlDB scopes variables to one request. ksqlDB's parser does
-- not take a variable as a WINDOW size (its grammar wants a number and a unit
-- there), so read_pipeline substitutes them before the text is sent to a
-- server; paste the statement into a ksqlDB CLI with the values written in.
DEFINE results_window_size = '48 HOURS';
DEFINE results_window_grace = '10 MINUTES';

CREATE TABLE IF NOT EXISTS survey_results_final WITH (
  kafka_topic = 'survey-results-final',
  value_format = 'AVRO'
) AS SELECT
  e.survey_id AS survey_id,
  LATEST_BY_OFFSET(q.question) AS question,
  HISTOGRAM(e.response) AS results
FROM survey_entries e
  LEFT JOIN survey_questions q ON e.survey_id = q.id
WINDOW TUMBLING (SIZE ${results_window_size}, GRACE PERIOD ${results_window_grace})
GROUP BY e.survey_id
EMIT FINAL;
