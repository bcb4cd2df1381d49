-- Live results (talk, slides 47-49): the histogram of responses of each survey,
-- updated with every entry. Entries carry no question text, so it comes from
-- survey_questions, joined on the survey_id. Results are grouped by survey_id,
-- not by question text: two surveys may ask the same question, and an entry
-- that arrives before its question is still counted (LEFT JOIN; the question
-- fills in with the first entry joined after it is known).
CREATE TABLE IF NOT EXISTS survey_results_live WITH (
  kafka_topic = 'survey-results-live',
  value_format = 'AVRO'
) AS SELECT
  e.survey_id AS survey_id,
  LATEST_BY_OFFSET(q.question) AS question,
  HISTOGRAM(e.response) AS results
FROM survey_entries e
  LEFT JOIN survey_questions q ON e.survey_id = q.id
GROUP BY e.survey_id
EMIT CHANGES;
