-- The questions of the surveys (talk, slides 29 and 46): one row per survey.
-- The topic is keyed by the survey_id string (KAFKA key format); the value is
-- Avro record survey.bot.surveyQuestion (survey_id, question, summary, options,
-- enabled), inferred from the registry. The key column is called `id` because
-- the value already has a SURVEY_ID column and a key column may not share a
-- value column's name.
CREATE TABLE IF NOT EXISTS survey_questions (
  id STRING PRIMARY KEY
) WITH (
  kafka_topic = 'survey-questions',
  value_format = 'AVRO'
);
